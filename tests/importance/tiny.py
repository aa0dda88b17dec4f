"""Tiny models for the importance tests, built in the test, with layers made to differ on purpose."""

from __future__ import annotations

import torch
from transformers import MistralConfig, MistralForCausalLM

from recipes.tiny_teacher import build_tokenizer

HARMLESS, ESSENTIAL = 1, 2  # layer 1 adds nothing to the residual stream; layer 2 dominates it


def tiny_mistral(tokenizer, num_layers: int = 4, seed: int = 0) -> MistralForCausalLM:
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, sliding_window=None,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return MistralForCausalLM(config).eval()


def layered_mistral(tokenizer) -> MistralForCausalLM:
    """Layer HARMLESS's output projections are zero (removing it changes nothing); layer ESSENTIAL's are
    scaled up so that its contribution swamps the others'."""
    model = tiny_mistral(tokenizer)
    with torch.no_grad():
        harmless, essential = model.model.layers[HARMLESS], model.model.layers[ESSENTIAL]
        harmless.self_attn.o_proj.weight.zero_()
        harmless.mlp.down_proj.weight.zero_()
        essential.self_attn.o_proj.weight.mul_(30)
        essential.mlp.down_proj.weight.mul_(30)
    return model


def tokenizer():
    return build_tokenizer()
