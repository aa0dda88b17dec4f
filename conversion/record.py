"""``conversion.json``: what a converted checkpoint was made from, read by model cards and the trainer.

The teacher is identified by the sha256 of its configuration in canonical JSON (sorted keys, no whitespace),
computed from the config *object* so that anyone holding the teacher (a path, a Hub id, a loaded model) can
check "this student is a conversion of this teacher" with ``teacher_config_sha256(AutoConfig.from_pretrained(...))``.
Keys that describe the environment rather than the model (transformers version, where it was loaded from)
are left out of the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from transformers import PretrainedConfig

RECORD_FILE = "conversion.json"
_ENVIRONMENT_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "_attn_implementation_autoset")


@dataclass(frozen=True)
class ConversionRecord:
    teacher: str  # path or Hub id the teacher was read from
    teacher_config_sha256: str
    replaced_layers: list[int]  # layers this conversion turned into Mamba
    mamba_layers: list[int]  # all Mamba layers of the student (an AprielH1 teacher's included)
    init_method: str
    package_version: str
    dtype: str
    seed: int
    # Config hashes of the models the teacher itself was converted from, nearest first: a staged run converts
    # stage N from stage N-1's hybrid but distils against the original transformer, which is listed here.
    ancestor_config_sha256s: tuple[str, ...] = ()


def teacher_config_sha256(config: PretrainedConfig | dict) -> str:
    """sha256 of the config in canonical JSON, without the environment keys."""
    fields = dict(config) if isinstance(config, dict) else config.to_dict()
    for key in _ENVIRONMENT_KEYS:
        fields.pop(key, None)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def package_version() -> str:
    try:
        return version("apriel-h1")
    except PackageNotFoundError:  # running from a source tree that was not pip-installed
        return "unknown"


def write_record(directory: str | Path, record: ConversionRecord) -> None:
    (Path(directory) / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")


def read_record(directory: str | Path) -> ConversionRecord:
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {directory} was not written by conversion.convert")
    fields = json.loads(path.read_text())
    expected = set(ConversionRecord.__dataclass_fields__)
    fields.setdefault("ancestor_config_sha256s", [])  # records written before lineage was kept
    fields["ancestor_config_sha256s"] = tuple(fields["ancestor_config_sha256s"])
    if set(fields) != expected:
        raise ValueError(
            f"{path} has fields {sorted(fields)}, expected {sorted(expected)}; was it written by another version?"
        )
    return ConversionRecord(**fields)


def is_conversion_of(record: ConversionRecord, teacher_config: PretrainedConfig | dict) -> bool:
    """Whether the student descends from ``teacher_config``: its direct teacher or one the teacher came from."""
    wanted = teacher_config_sha256(teacher_config)
    return wanted == record.teacher_config_sha256 or wanted in record.ancestor_config_sha256s


def ancestors_of(teacher_dir: str | Path) -> tuple[str, ...]:
    """The lineage a conversion of ``teacher_dir`` inherits: empty for a plain transformer."""
    if not (Path(teacher_dir) / RECORD_FILE).is_file():
        return ()
    record = read_record(teacher_dir)
    return (record.teacher_config_sha256, *record.ancestor_config_sha256s)
