"""Streaming conversion of a safetensors checkpoint directory: shard in, shard out, one tensor at a time.

Each teacher shard becomes one student shard (a replaced layer's mixer goes where that layer's attention
was), so memory stays near the largest tensor and a 30 GB teacher converts on a 24 GB machine. The output
is a normal ``save_pretrained`` directory: weights + index, config with auto_map, the modeling files (remote
code), the teacher's tokenizer / chat template / generation config, and ``conversion.json``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig
from transformers.dynamic_module_utils import custom_object_save

from modeling_apriel_h1 import AprielH1Config

from cli import model_source
from .mil import INIT_METHOD
from .atomic_io import staged_output_dir
from .plan import PlannedTensor, causal_lm_class, plan_student_tensors
from .record import ConversionRecord, ancestors_of, package_version, teacher_config_sha256, write_record
from .safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointReader, write_safetensors
from .teachers import hybrid_config_from_teacher

# Files of the teacher that describe how to use it rather than its weights; copied when present.
TEACHER_FILES_TO_COPY = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


def convert_checkpoint(
    teacher: str | Path,
    output: str | Path,
    mamba_layers: list[int],
    seed: int = 0,
    dtype: torch.dtype | None = None,
    d_state: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionRecord:
    """Convert the checkpoint directory ``teacher`` into an Apriel-H1 hybrid in ``output``.

    ``mamba_layers`` are the layers to replace now (an AprielH1 teacher keeps its own Mamba layers). ``dtype``
    defaults to the teacher's embedding dtype. Errors (bad layers, unsupported teacher, existing output)
    are raised before anything is written; the output directory appears only once complete.
    """
    teacher, output = Path(teacher), Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"output directory {output} already exists; pass --overwrite to replace it")
    model_source(teacher, "teacher", "hf download ORG/NAME --local-dir DIR, then give DIR")
    teacher_config = AutoConfig.from_pretrained(teacher)
    config = hybrid_config_from_teacher(teacher_config, list(mamba_layers), d_state=d_state)
    reader = CheckpointReader(teacher)
    dtype = dtype or reader.dtype("model.embed_tokens.weight")
    config.dtype = dtype
    plan = plan_student_tensors(config, reader.names, reader.read, list(mamba_layers), seed, dtype)
    shards: dict[str, list[PlannedTensor]] = defaultdict(list)
    for source, entry in plan:
        shards[reader.weight_map[source]].append(entry)
    record = ConversionRecord(
        teacher=str(teacher),
        teacher_config_sha256=teacher_config_sha256(teacher_config),
        replaced_layers=sorted(mamba_layers),
        mamba_layers=config.mamba_layer_indices,
        init_method=INIT_METHOD,
        package_version=package_version(),
        dtype=str(dtype).removeprefix("torch."),
        seed=seed,
        ancestor_config_sha256s=ancestors_of(teacher),
    )
    with staged_output_dir(output, overwrite=overwrite) as staging:
        _write_shards(staging, [shards[file] for file in reader.files if shards[file]], progress)
        write_config_and_code(staging, config)
        for name in TEACHER_FILES_TO_COPY:
            if (teacher / name).is_file():
                shutil.copy2(teacher / name, staging / name)
        write_record(staging, record)
    return record


def _write_shards(directory: Path, shards: list[list[PlannedTensor]], progress: bool) -> None:
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)
    ]
    weight_map: dict[str, str] = {}
    total_size = 0
    bar = tqdm(total=sum(len(shard) for shard in shards), desc="converting tensors", unit="tensor", disable=not progress)
    for name, shard in zip(names, shards):
        bar.set_postfix_str(name)
        total_size += write_safetensors(directory / name, _advancing(shard, bar))
        weight_map.update({entry.name: name for entry in shard})
    bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _advancing(shard: list[PlannedTensor], bar: tqdm) -> list[PlannedTensor]:
    """The same plan, ticking the progress bar as each tensor is computed."""

    def ticking(entry: PlannedTensor) -> PlannedTensor:
        def compute() -> torch.Tensor:
            tensor = entry.compute()
            bar.update(1)
            return tensor

        return PlannedTensor(entry.name, entry.shape, entry.dtype, compute)

    return [ticking(entry) for entry in shard]


def write_config_and_code(directory: Path, config: AprielH1Config) -> None:
    """config.json with auto_map, plus the modeling files, as ``save_pretrained`` would write them."""
    model_class = causal_lm_class(config)
    with torch.device("meta"):
        model = model_class(config)
    custom_object_save(model, directory, config=config)
    config.architectures = [model_class.__name__]
    config.save_pretrained(directory)
