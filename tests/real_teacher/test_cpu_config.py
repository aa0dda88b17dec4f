"""The shipped CPU schedule for SmolLM2 reads as a complete schedule and stage config (no model needed)."""

from __future__ import annotations

from pathlib import Path

from recipes.schedule import _stage_config, load_schedule_config, resolve_targets

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "schedule_smollm2_cpu.yaml"


def test_the_smollm2_cpu_schedule_is_one_stage_to_half_mamba_with_a_complete_stage_config(tmp_path):
    config = load_schedule_config(CONFIG)
    assert resolve_targets(config, num_layers=30, already_mamba=0) == [15]
    assert (config.first_importance, config.later_importance) == ("loo", "loo")
    stage = _stage_config(config, tmp_path / "student", tmp_path / "distill")
    assert (stage.teacher, stage.loss, stage.dtype) == (config.teacher, "reverse_kl", "float32")
    assert (stage.per_device_batch_size, stage.max_seq_length, stage.max_steps) == (2, 128, 100)
    assert (stage.text_data, stage.text_share) == ("python_docs", 0.25)  # docs/study.md: perplexity 99 -> 31
