"""Every tensor the decode engine reads or writes between steps, allocated once and updated in place.

One slot per sequence being generated: KV rows only for attention layers, a conv window and an SSM state for
Mamba layers, plus the bookkeeping the captured step advances by itself (lengths, last token, tokens generated,
which slots are still running). Nothing here is ever rebound after allocation, so a CUDA graph that captured a
step keeps pointing at live memory; a finished slot is handed to the next request by overwriting its rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layer_types import decoder_layers, is_mamba_layer

MAX_STOP_TOKENS = 8  # EOS ids one call may ask for (the captured step compares against a fixed-size buffer)


def head_dim(config) -> int:
    """Per-head width: the config's ``head_dim`` where it sets one (Mistral may), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def slot_tensors(
    model: nn.Module, max_len: int, ssm_dtype: torch.dtype = torch.float32
) -> list[tuple[str, int, tuple[int, ...], torch.dtype]]:
    """What one slot holds, per layer: (kind, layer index, shape without the slot axis, dtype), kind being
    ``keys``/``values`` for attention layers (max_len, kv_heads, head_dim) and ``conv``/``ssm`` for Mamba layers.
    ``DecodeState`` allocates these and ``bytes_per_sequence`` counts them, so the two cannot disagree."""
    config = model.config
    dtype = next(model.parameters()).dtype
    tensors = []
    for index, layer in enumerate(decoder_layers(model)):
        if is_mamba_layer(layer):
            mixer = layer.mixer
            tensors += [("conv", index, (mixer.d_inner, mixer.d_conv), dtype),
                        ("ssm", index, (mixer.d_inner, mixer.d_state), ssm_dtype)]
        else:  # (max_len, kv_heads, head_dim): the layout flash-attn's kv-cache kernel reads
            kv = (max_len, config.num_key_value_heads, head_dim(config))
            tensors += [("keys", index, kv, dtype), ("values", index, kv, dtype)]
    return tensors


def bytes_per_sequence(model: nn.Module, max_len: int, ssm_dtype: torch.dtype = torch.float32) -> int:
    """Bytes one slot of ``DecodeState`` takes: KV of ``max_len`` tokens per attention layer, conv window and
    SSM state per Mamba layer (to size a batch from a memory budget before allocating)."""
    return sum(math.prod(shape) * dtype.itemsize for _, _, shape, dtype in slot_tensors(model, max_len, ssm_dtype))


class DecodeState:
    """Preallocated state for ``slots`` sequences of at most ``max_len`` tokens (prompt + generated)."""

    def __init__(self, model: nn.Module, slots: int, max_len: int, ssm_dtype: torch.dtype = torch.float32):
        device = next(model.parameters()).device
        self.slots, self.max_len = slots, max_len
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.ssm: dict[int, torch.Tensor] = {}
        for kind, index, shape, dtype in slot_tensors(model, max_len, ssm_dtype):
            getattr(self, kind)[index] = torch.zeros(slots, *shape, device=device, dtype=dtype)

        def counter(fill: int = 0) -> torch.Tensor:
            return torch.full((slots,), fill, device=device, dtype=torch.long)

        self.lengths = counter()  # tokens in the cache; the next token is written at this position
        self.last_token = counter()  # the newest token of each slot, the next step's input
        self.generated_count = counter()
        self.budget = counter()  # new tokens each slot may generate
        self.active = torch.zeros(slots, device=device, dtype=torch.bool)
        self.generated = torch.zeros(slots, max_len + 1, device=device, dtype=torch.long)
        self.stop_ids = torch.full((MAX_STOP_TOKENS,), -1, device=device, dtype=torch.long)
        self.row_index = torch.arange(slots, device=device)

    def cache_bytes(self) -> int:
        """Bytes of KV and Mamba state (what grows with slots and length)."""
        tensors = [*self.keys.values(), *self.values.values(), *self.conv.values(), *self.ssm.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def set_stop_ids(self, stop_ids: list[int]) -> None:
        if len(stop_ids) > MAX_STOP_TOKENS:
            raise ValueError(f"{len(stop_ids)} EOS ids given; the engine takes at most {MAX_STOP_TOKENS}")
        self.stop_ids.fill_(-1)
        if stop_ids:
            self.stop_ids[: len(stop_ids)] = torch.tensor(stop_ids, dtype=torch.long)

    def clear_bookkeeping(self) -> None:
        """Forget every request (after the capture's warm-up steps, or between calls)."""
        for counter in (self.lengths, self.last_token, self.generated_count, self.budget):
            counter.zero_()
        self.active.zero_()
