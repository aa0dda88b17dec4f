"""One vocabulary for layer kinds: every spelling of ``layer_types`` this package reads, the released layout's
``t``/``m2``, and one definition of "which layers are Mamba"."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

from modeling_apriel_h1.layer_types import (
    layer_types_from_released,
    mamba_layers_in,
    mamba_layers_of,
    released_layout,
    stored_layer_type,
    user_name,
)
from tests.modeling.tiny import tiny_config


def test_mamba_layers_under_the_users_and_the_stored_names():
    assert mamba_layers_in(["mamba", "attention", "linear_attention", "full_attention"]) == [0, 2]
    assert mamba_layers_in(["full_attention", "sliding_attention"]) == [] and mamba_layers_in(None) == []


def test_the_config_answers_with_the_same_definition():
    config = tiny_config(["attention", "mamba", "attention", "mamba"])
    assert config.layer_types == ["full_attention", "linear_attention", "full_attention", "linear_attention"]
    assert config.mamba_layer_indices == mamba_layers_in(config.layer_types) == mamba_layers_of(config) == [1, 3]


def test_a_transformers_layer_types_have_no_mamba_layer_even_under_our_stored_name():
    teacher = Qwen2Config(num_hidden_layers=2, layer_types=["full_attention", "full_attention"])
    teacher.layer_types = ["linear_attention", "full_attention"]  # as a Qwen3-Next-style config names its own mixer
    assert mamba_layers_of(teacher) == []


def test_released_layout_round_trip_and_user_names():
    stored = [stored_layer_type(index, kind) for index, kind in enumerate(["attention", "mamba", "linear_attention"])]
    assert released_layout(stored) == ["t", "m2", "m2"]
    assert layer_types_from_released(released_layout(stored)) == stored
    assert [user_name(kind) for kind in stored] == ["attention", "mamba", "mamba"]
    with pytest.raises(ValueError, match=r"layer_types\[1\] is 'mamba2'.*'attention' or 'mamba'"):
        stored_layer_type(1, "mamba2")
