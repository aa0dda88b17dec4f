"""The configuration of one distillation stage: a YAML file plus command-line overrides.

Every key must be in the YAML file (documented there); nothing has a default hidden in code, so a config
file is a complete record of a stage. ``--set key=value`` overrides a key, the value parsed as YAML
(``--set packing=true``, ``--set learning_rate=1e-4``, ``--set save_total_limit=null``). Every value is checked
against its field's type and range before anything runs, and a message names where a wrong value came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from cli import UsageError, read_yaml_mapping
from cli.yaml_values import load_yaml
from recipes.training.text_mix import check_text_settings


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
    text_data: str | None
    text_share: float
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


# Settings that count something and mean nothing at 0 or below: transformers would not refuse them but read
# them otherwise (max_steps <= 0 trains for num_train_epochs, 3 by default), so they must be at least 1.
POSITIVE_SETTINGS = (
    "max_steps", "per_device_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps",
    "logging_steps", "save_steps", "eval_steps", "save_total_limit", "max_seq_length",
    "chunk_size", "gradient_checkpointing_layers", "learning_rate", "temperature",
)
# Settings where 0 means "none" (no warm-up, no held-out rows, no decay, no synthetic rows for other data) and a
# negative value nothing.
NON_NEGATIVE_SETTINGS = (
    "warmup_steps", "eval_examples", "weight_decay", "max_grad_norm", "jsd_beta", "synthetic_examples",
)
# Where a value came from, per key, for messages: "in recipes/configs/distill_tiny.yaml", "from --set max_steps=-5".
Origins = Mapping[str, str]


def parse_override(override: str) -> tuple[str, object]:
    """``key=value`` -> (key, value parsed as YAML, numbers as users spell them: ``1e-3``, ``5e+2``)."""
    key, separator, value = override.partition("=")
    if not separator or not key:
        raise ValueError(f"Override {override!r} is not of the form key=value (e.g. --set max_steps=100).")
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError as error:
        raise UsageError(f"--set {override}: the value is not valid YAML ({' '.join(str(error).split())})") from None


def checked_values(values: dict[str, object], config_class: type, origins: Origins) -> dict[str, object]:
    """``values`` with each one checked against its field, so that a typo fails here rather than deep inside
    training: a UsageError names the first value of the wrong type (``max_steps=ten``) or out of range
    (``max_steps=-5``) and where it came from. An int is accepted where a float is expected, and a whole float
    where an int is (``max_steps=1e3`` is 1000)."""
    accepted = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}
    checked = dict(values)
    for field in dataclasses.fields(config_class):
        kinds = [kind.strip() for kind in str(field.type).split("|")]
        if field.name not in values or any(kind not in accepted and kind != "None" for kind in kinds):
            continue  # a field typed otherwise (Any) takes any value
        value = values[field.name]
        where = origins.get(field.name, "")
        if value is None and "None" in kinds:
            continue
        if "int" in kinds and "float" not in kinds and isinstance(value, float) and value.is_integer():
            value = checked[field.name] = int(value)
        allowed = tuple(t for kind in kinds if kind != "None" for t in accepted[kind])
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise UsageError(f"{field.name} is {value!r} ({where}); give a value of type {field.type}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if field.name in POSITIVE_SETTINGS and not value > 0:
            raise UsageError(f"{field.name} is {value!r} ({where}); it must be a number above 0")
        if field.name in NON_NEGATIVE_SETTINGS and not value >= 0:
            raise UsageError(f"{field.name} is {value!r} ({where}); it must be 0 or a number above 0")
    return checked


def load_stage_config(
    path: str | Path, overrides: list[str] = (), override_origins: Origins | None = None
) -> StageConfig:
    """The stage config in ``path`` with ``overrides`` (``key=value`` strings) applied. Messages say where each
    value came from: the file, ``--set key=value``, or ``override_origins[key]`` for a caller's own overrides."""
    values = read_yaml_mapping(path, "stage config")
    origins = {key: f"in {path}" for key in values}
    for override in overrides:
        key, value = parse_override(override)
        values[key] = value
        origins[key] = (override_origins or {}).get(key, f"from --set {override}")
    known = {field.name for field in dataclasses.fields(StageConfig)}
    unknown, missing = sorted(set(values) - known), sorted(known - set(values))
    if unknown:
        where = "; ".join(dict.fromkeys(origins[key] for key in unknown))
        raise ValueError(f"Unknown config keys {unknown} ({where}); the known keys are {sorted(known)}.")
    if missing:
        raise ValueError(f"Config {path} lacks keys {missing}; every key must be set (see recipes/configs/).")
    config = StageConfig(**checked_values(values, StageConfig, origins))
    check_text_settings(config.text_data, config.text_share, origins)
    return config
