"""The configuration of one distillation stage: a YAML file plus command-line overrides.

Every key must be in the YAML file (documented there); nothing has a default hidden in code, so a config
file is a complete record of a stage. ``--set key=value`` overrides a key, the value parsed as YAML
(``--set packing=true``, ``--set learning_rate=1e-4``, ``--set save_total_limit=null``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from conversion.cli import UsageError, read_yaml_mapping


@dataclass(frozen=True)
class StageConfig:
    """One distillation stage; the meaning of each field is documented in ``recipes/configs/*.yaml``."""

    teacher: str
    student: str
    output_dir: str
    dtype: str
    data: str
    data_split: str
    synthetic_examples: int
    data_seed: int
    eval_examples: int
    max_seq_length: int
    packing: bool | str
    loss: str
    jsd_beta: float
    temperature: float
    chunk_size: int
    trainable: str
    learning_rate: float
    warmup_steps: float
    weight_decay: float
    max_grad_norm: float
    per_device_batch_size: int
    gradient_accumulation_steps: int
    max_steps: int
    logging_steps: int
    save_steps: int
    save_total_limit: int | None
    eval_steps: int
    seed: int
    bf16: bool
    gradient_checkpointing: bool
    gradient_checkpointing_layers: int | None
    compile_layers: bool
    teacher_inference_mode: bool
    kd_loss_backend: str
    report_to: str


def parse_override(override: str) -> tuple[str, object]:
    """``key=value`` -> (key, value parsed as YAML)."""
    key, separator, value = override.partition("=")
    if not separator or not key:
        raise ValueError(f"Override {override!r} is not of the form key=value (e.g. --set max_steps=100).")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise UsageError(f"--set {override}: the value is not valid YAML ({' '.join(str(error).split())})") from None


def check_field_types(values: dict[str, object], config_class: type, where: str) -> None:
    """A UsageError naming the first value whose type is not its field's (``--set max_steps=ten``), so that a
    typo fails here rather than deep inside training. An int is accepted where a float is expected."""
    accepted = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}
    for field in dataclasses.fields(config_class):
        kinds = [kind.strip() for kind in str(field.type).split("|")]
        if field.name not in values or any(kind not in accepted and kind != "None" for kind in kinds):
            continue  # a field typed otherwise (Any) takes any value
        value = values[field.name]
        allowed = tuple(t for kind in kinds if kind != "None" for t in accepted[kind])
        if value is None and "None" in kinds:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise UsageError(f"{field.name} is {value!r} ({where}); give a value of type {field.type}")


def load_stage_config(path: str | Path, overrides: list[str] = ()) -> StageConfig:
    """The stage config in ``path`` with ``overrides`` (``key=value`` strings) applied."""
    values = read_yaml_mapping(path, "stage config")
    values.update(parse_override(override) for override in overrides)
    known = {field.name for field in dataclasses.fields(StageConfig)}
    unknown, missing = sorted(set(values) - known), sorted(known - set(values))
    if unknown:
        raise ValueError(f"Unknown config keys {unknown} (from {path} or --set); the known keys are {sorted(known)}.")
    if missing:
        raise ValueError(f"Config {path} lacks keys {missing}; every key must be set (see recipes/configs/).")
    check_field_types(values, StageConfig, f"from {path} or --set")
    return StageConfig(**values)
