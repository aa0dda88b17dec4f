"""The shipped configs load: every stage config sets and documents every key, the schedules override only stage keys,
the accelerate configs are ones accelerate reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from recipes.training.stage_config import StageConfig, load_stage_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "configs"


STAGE_KEYS = {field.name for field in dataclasses.fields(StageConfig)}


@pytest.mark.parametrize("name", ["distill_tiny.yaml", "distill_15b.yaml"])
def test_stage_configs_have_every_key(name):
    """Each shipped stage config sets exactly the StageConfig fields, each on its own documented line (a comment
    after the value, or on the lines above it), and loads to the values the file holds."""
    path = CONFIGS / name
    values = yaml.safe_load(path.read_text())
    assert set(values) == STAGE_KEYS, f"missing {sorted(STAGE_KEYS - set(values))}, unknown {sorted(set(values) - STAGE_KEYS)}"
    lines = path.read_text().splitlines()
    for key in STAGE_KEYS:
        (number,) = [n for n, line in enumerate(lines) if line.startswith(f"{key}:")]
        assert "#" in lines[number] or lines[number - 1].lstrip().startswith("#"), f"{name}: {key} is not documented"
    assert dataclasses.asdict(load_stage_config(path)) == values


@pytest.mark.parametrize("name", ["schedule_tiny.yaml", "schedule_demo.yaml"])
def test_schedule_configs_override_only_stage_keys(name):
    schedule = yaml.safe_load((CONFIGS / name).read_text())
    assert set(schedule.get("distill", {})) <= STAGE_KEYS
    assert set(load_stage_config(CONFIGS / schedule["distill_config"]).__dict__) == STAGE_KEYS


def test_the_15b_stage_is_the_papers_step():
    config = load_stage_config(CONFIGS / "distill_15b.yaml")
    assert config.max_seq_length == 16384 and config.learning_rate == 5e-5 and config.dtype == "bfloat16"
    assert config.per_device_batch_size * config.gradient_accumulation_steps * 8 == 64  # sequences per step on 8 GPUs


@pytest.mark.parametrize(
    "name, kind, precision",
    [("accelerate_fsdp_8gpu.yaml", "FSDP", "no"), ("accelerate_zero3_8gpu.yaml", "DEEPSPEED", "bf16")],
)
def test_accelerate_configs_are_read_by_accelerate(name, kind, precision):
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == kind and config.num_processes == 8 and config.mixed_precision == precision
    if kind == "DEEPSPEED":
        deepspeed_file = REPO / config.deepspeed_config["deepspeed_config_file"]
        assert json.loads(deepspeed_file.read_text())["zero_optimization"]["stage"] == 3
    else:
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
