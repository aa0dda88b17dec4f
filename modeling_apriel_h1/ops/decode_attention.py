"""Attention for one new token per sequence over the decode engine's preallocated KV cache.

Three implementations of one function, chosen once per engine: flash-attn's ``flash_attn_with_kvcache`` when
installed, our Triton split-K kernel on CUDA, else the PyTorch reference below (the specification the other two
are tested against). All read only each row's live keys: ``lengths[r]`` keys of row ``r``, the newest included.

Shapes: q (rows, Hq, D); k_cache, v_cache (slots >= rows, max_len, Hkv, D), rows 0..rows-1 used; lengths (rows,).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch

DecodeAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def reference_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention in fp32 over keys 0..lengths[r]-1 of each row (reads up to the longest live row: it
    syncs with the host to learn it, so it is for eager use)."""
    rows, q_heads, _ = q.shape
    live = int(lengths.max())
    group = q_heads // k_cache.shape[2]
    keys = k_cache[:rows, :live].float().repeat_interleave(group, dim=2)  # (rows, live, Hq, D)
    values = v_cache[:rows, :live].float().repeat_interleave(group, dim=2)
    scores = torch.einsum("rhd,rlhd->rhl", q.float(), keys) * scale
    is_live = torch.arange(live, device=q.device)[None, :] < lengths[:, None]  # (rows, live)
    scores = scores.masked_fill(~is_live[:, None, :], float("-inf"))
    return torch.einsum("rhl,rlhd->rhd", scores.softmax(dim=-1), values).to(q.dtype)


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _triton_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    from .triton_kernels.split_k_decode_attention import decode_attention, split_count

    splits = split_count(q.shape[0], k_cache.shape[2], k_cache.shape[1], _multiprocessors(q.device.index or 0))
    return decode_attention(q.contiguous(), k_cache, v_cache, lengths, scale, splits)


def _flash_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    from flash_attn import flash_attn_with_kvcache

    rows = q.shape[0]
    out = flash_attn_with_kvcache(
        q.unsqueeze(1), k_cache[:rows], v_cache[:rows], cache_seqlens=lengths.to(torch.int32),
        softmax_scale=scale, causal=True,
    )
    return out.squeeze(1)


IMPLEMENTATIONS: dict[str, DecodeAttention] = {
    "reference": reference_decode_attention,
    "triton": _triton_decode_attention,
    "flash_attn": _flash_decode_attention,
}


def resolve_decode_attention(device: torch.device, preference: str | None = None) -> tuple[str, DecodeAttention]:
    """(name, function) of the implementation to use on ``device``: ``preference`` if given, else flash-attn,
    then Triton on CUDA, else the reference."""
    if preference is not None:
        if preference not in IMPLEMENTATIONS:
            raise ValueError(f"decode attention {preference!r} is unknown; choose one of {sorted(IMPLEMENTATIONS)}")
        if preference != "reference" and device.type != "cuda":
            raise ValueError(f"decode attention {preference!r} needs a CUDA device; {device} has only 'reference'")
        return preference, IMPLEMENTATIONS[preference]
    if device.type != "cuda":
        return "reference", reference_decode_attention
    for name, module in (("flash_attn", "flash_attn"), ("triton", "triton")):
        if importlib.util.find_spec(module) is not None:
            return name, IMPLEMENTATIONS[name]
    return "reference", reference_decode_attention
