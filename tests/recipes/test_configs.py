"""The shipped configs load: every stage config has every key, the accelerate configs are ones accelerate reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from recipes.stage_config import load_stage_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "configs"


@pytest.mark.parametrize("name", ["distill_tiny.yaml", "distill_15b.yaml"])
def test_stage_configs_have_every_key(name):
    config = load_stage_config(CONFIGS / name)
    assert config.loss == "reverse_kl" and config.teacher_inference_mode is False


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
