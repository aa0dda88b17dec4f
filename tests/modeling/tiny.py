"""Tiny random Apriel-H1 / Mistral configurations shared by the modeling tests."""

from __future__ import annotations

from transformers import MistralConfig

from modeling_apriel_h1 import AprielH1Config

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MIXED = ["attention", "mamba", "mamba", "attention"]


def tiny_config(layer_types: list[str] | None = None, **overrides) -> AprielH1Config:
    fields = {**TINY, "layer_types": MIXED if layer_types is None else layer_types, "mamba_d_state": 8}
    fields.update(overrides)
    return AprielH1Config(**fields)


def tiny_mistral_config(**overrides) -> MistralConfig:
    return MistralConfig(**{**TINY, "sliding_window": None, **overrides})
