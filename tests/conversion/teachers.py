"""Tiny random teachers (Mistral, Llama, Qwen2 with q/k/v biases, an AprielH1 hybrid) built in the test."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM

from ..modeling.tiny import TINY, tiny_mistral_config

TEACHER_KINDS = ("mistral", "llama", "qwen2")


def _randomise_biases(model: PreTrainedModel, seed: int) -> None:
    """transformers initialises biases to zero; random ones show where each bias ends up."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def tiny_teacher(kind: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """head_dim 16 = the default mamba_d_state, so d_inner (64) and d_xb (32) split into whole state groups."""
    torch.manual_seed(seed)
    if kind == "mistral":
        model = MistralForCausalLM(tiny_mistral_config(**overrides))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{**TINY, **overrides}))
    elif kind == "apriel_h1":
        layer_types = overrides.pop("layer_types", ["attention", "mamba", "attention", "attention"])
        model = AprielH1ForCausalLM(AprielH1Config(**{**TINY, "layer_types": layer_types, **overrides}))
    else:
        raise ValueError(kind)
    _randomise_biases(model, seed)
    return model.eval()


def input_ids(batch: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
