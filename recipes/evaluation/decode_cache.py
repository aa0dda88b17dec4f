"""Bytes of decode state a model keeps per sequence: what a hybrid saves, measured without a clock.

A decoding attention layer keeps a key and a value per past token; a Mamba layer keeps a convolution window
and an SSM state whose size does not depend on the context. Per-token decode cost at long contexts follows
that state (it is what each step reads), and unlike a CPU timing it is the same on every run: it is counted
from the cache tensors a real prefill leaves behind, not derived from the config.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from modeling_apriel_h1.transformers_compat import cache_of


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):  # linear-attention (Mamba) layers keep their states per index in dicts
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def cache_tensor_bytes(cache: object) -> int:
    """Bytes held by every tensor of a transformers cache (its layers' keys, values, conv and SSM states)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"{type(cache).__name__} has no per-layer list; expected a transformers Cache")
    seen: set[int] = set()
    total = 0
    for layer in layers:
        for tensor in _tensors(list(vars(layer).values())):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def decode_cache_bytes(model: PreTrainedModel, context_length: int) -> int:
    """Bytes of cache one sequence holds after a prefill of ``context_length`` tokens (batch 1)."""
    model.eval()
    ids = torch.zeros((1, context_length), dtype=torch.long, device=model.device)
    output = model(input_ids=ids, use_cache=True)
    return cache_tensor_bytes(cache_of(output))
