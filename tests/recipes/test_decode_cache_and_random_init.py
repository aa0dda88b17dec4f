"""The demo's decode-cache column counts real cache tensors; random init redraws only the chosen mixers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conversion import convert_checkpoint
from conversion.record import RECORD_FILE
from recipes.evaluation.decode_cache import decode_cache_bytes
from recipes.schedule import load_schedule_config
from recipes.training.random_init import RANDOM_INIT_METHOD, randomise_mixers
from tests.recipes.conftest import load_teacher


def test_attention_cache_grows_with_the_context_and_mamba_state_does_not(teacher_dir, tmp_path):
    teacher = load_teacher(teacher_dir)
    config = teacher.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) * 4
    assert decode_cache_bytes(teacher, 16) == 16 * per_token  # keys and values, float32, every layer
    assert decode_cache_bytes(teacher, 32) == 32 * per_token
    convert_checkpoint(teacher_dir, tmp_path / "hybrid", [1, 3], progress=False)
    from transformers import AutoModelForCausalLM

    hybrid = AutoModelForCausalLM.from_pretrained(tmp_path / "hybrid")
    short, long = decode_cache_bytes(hybrid, 16), decode_cache_bytes(hybrid, 32)
    assert long - short == 16 * per_token // 2  # only the two attention layers grow
    assert short > 16 * per_token // 2  # the Mamba layers hold their (constant) state too


def test_randomise_mixers_redraws_only_the_named_layers(teacher_dir, tmp_path):
    convert_checkpoint(teacher_dir, tmp_path / "hybrid", [1, 3], progress=False)
    before = load_file(tmp_path / "hybrid" / "model.safetensors")
    randomise_mixers(tmp_path / "hybrid", [3], seed=0)
    after = load_file(tmp_path / "hybrid" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.layers.3.mixer.") for name in changed)
    assert "model.layers.3.mixer.in_proj.weight" in changed
    assert json.loads((tmp_path / "hybrid" / RECORD_FILE).read_text())["init_method"] == RANDOM_INIT_METHOD
    assert (tmp_path / "hybrid" / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="not Mamba layers"):
        randomise_mixers(tmp_path / "hybrid", [0], seed=0)


def test_schedule_refuses_an_unknown_mamba_init(tmp_path):
    config = tmp_path / "schedule.yaml"
    config.write_text("teacher: t\noutput_dir: o\nmamba_init: zeros\n")
    with pytest.raises(ValueError, match="mamba_init"):
        load_schedule_config(config)
