"""One definition of "which layers are Mamba", for every spelling of ``layer_types`` this package reads."""

from __future__ import annotations

from modeling_apriel_h1.configuration_apriel_h1 import mamba_layers_in
from tests.modeling.tiny import tiny_config


def test_mamba_layers_under_the_users_and_the_stored_names():
    assert mamba_layers_in(["mamba", "attention", "linear_attention", "full_attention"]) == [0, 2]
    assert mamba_layers_in(["full_attention", "sliding_attention"]) == [] and mamba_layers_in(None) == []


def test_the_config_answers_with_the_same_definition():
    config = tiny_config(["attention", "mamba", "attention", "mamba"])
    assert config.layer_types == ["full_attention", "linear_attention", "full_attention", "linear_attention"]
    assert config.mamba_layer_indices == mamba_layers_in(config.layer_types) == [1, 3]
