"""Fused element-wise work of one decode step, so that a step is a few kernels per layer rather than dozens.

At batch 1 a 15B decode step is bound by reading the weights (about 7 ms on an H200), and every extra kernel in
the captured graph costs a few microseconds: transformers' RMSNorm is seven kernels, rotary embeddings ten, the
residual add and SiLU-times-up three more, times 50 layers. Each kernel here does one of those jobs in one pass
and rounds where the modules it replaces round, so its output equals theirs in fp32 and within bf16 rounding.

- ``add_rms_norm``: ``residual + x`` (optional) then Mistral/Llama RMSNorm; returns both.
- ``rotary_to_cache``: per-head q/k RMSNorm where the model has one (Qwen3), rotary embedding of q and k (of the
  first dims only under partial rotary), k and v written into the KV cache at each row's position.
- ``silu_mul``: ``silu(gate) * up``, the gated MLP's activation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, eps, width,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (rows,): one row of ``width`` per program; all tensors contiguous (rows, width)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    h = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0)
    if HAS_RESIDUAL:
        h = (h.to(tl.float32) + tl.load(residual_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32))
        h = h.to(out_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * width + cols, h, mask=inside)
    h = h.to(tl.float32)
    variance = tl.sum(h * h, axis=0) / width
    normed = (h * tl.math.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=inside, other=0.0)
    tl.store(out_ptr + row * width + cols, (weight.to(tl.float32) * normed.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=inside)


def add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(residual + x), residual + x) for x (..., width); without ``residual``, (norm(x), x)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1]).contiguous()
    rows, width = x.shape
    out = torch.empty_like(x)
    total = torch.empty_like(x) if residual is not None else x
    _add_rms_norm_kernel[(rows,)](
        x, residual.reshape(rows, width).contiguous() if residual is not None else x, weight, out, total,
        eps, width, HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(width), num_warps=8,
    )
    return out.view(shape), total.view(shape)


@triton.jit
def _normed_head(base, weight_ptr, dims, partner, inside, eps, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr):
    """One head's values at ``dims`` and at their rotary ``partner`` dims, in fp32: as loaded, or through the
    per-head RMSNorm (Qwen3's q_norm / k_norm), rounded where that module rounds (the normalised value to the
    input dtype, then times the weight, to the input dtype again)."""
    x = tl.load(base + dims, mask=inside, other=0.0)
    x_partner = tl.load(base + partner, mask=inside, other=0.0)
    if HAS_NORM:
        xf = x.to(tl.float32)
        scale = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / HEAD_DIM + eps)
        weight = tl.load(weight_ptr + dims, mask=inside, other=0.0).to(tl.float32)
        weight_partner = tl.load(weight_ptr + partner, mask=inside, other=0.0).to(tl.float32)
        x = (weight * (xf * scale).to(x.dtype).to(tl.float32)).to(x.dtype)
        x_partner = (weight_partner * (x_partner.to(tl.float32) * scale).to(x.dtype).to(tl.float32)).to(x.dtype)
    return x.to(tl.float32), x_partner.to(tl.float32)


@triton.jit
def _rotary_to_cache_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, positions_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
    q_norm_ptr, k_norm_ptr, eps,
    stride_q_row, stride_k_row, stride_v_row, stride_cache_row, stride_cache_pos, stride_cache_head,
    Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, ROTARY_DIM: tl.constexpr, BLOCK: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    """Grid (rows, Q_HEADS + KV_HEADS). Program h < Q_HEADS rotates query head h into q_out (rows, Q_HEADS, D);
    the others rotate key head h - Q_HEADS and write it, and the value head, at the row's cache position. With
    HAS_NORM each q and k head first goes through its RMSNorm; dims from ROTARY_DIM on pass through unrotated."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    half = ROTARY_DIM // 2
    dims = tl.arange(0, BLOCK)
    inside = dims < HEAD_DIM
    rotates = dims < ROTARY_DIM
    partner = tl.where(rotates, tl.where(dims < half, dims + half, dims - half), dims)
    sign = tl.where(dims < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + row * ROTARY_DIM + dims, mask=rotates, other=1.0).to(tl.float32)
    sin = tl.load(sin_ptr + row * ROTARY_DIM + dims, mask=rotates, other=0.0).to(tl.float32)
    if head < Q_HEADS:
        base = q_ptr + row * stride_q_row + head * HEAD_DIM
        x, x_partner = _normed_head(base, q_norm_ptr, dims, partner, inside, eps, HEAD_DIM, HAS_NORM)
        out = x * cos + x_partner * sign * sin
        tl.store(q_out_ptr + (row * Q_HEADS + head) * HEAD_DIM + dims, out.to(q_out_ptr.dtype.element_ty), mask=inside)
    else:
        kv_head = head - Q_HEADS
        base = k_ptr + row * stride_k_row + kv_head * HEAD_DIM
        x, x_partner = _normed_head(base, k_norm_ptr, dims, partner, inside, eps, HEAD_DIM, HAS_NORM)
        out = x * cos + x_partner * sign * sin
        position = tl.load(positions_ptr + row)
        slot = row * stride_cache_row + position * stride_cache_pos + kv_head * stride_cache_head
        tl.store(k_cache_ptr + slot + dims, out.to(k_cache_ptr.dtype.element_ty), mask=inside)
        value = tl.load(v_ptr + row * stride_v_row + kv_head * HEAD_DIM + dims, mask=inside)
        tl.store(v_cache_ptr + slot + dims, value, mask=inside)


def rotary_to_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_heads: int, head_dim: int,
    q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
) -> torch.Tensor:
    """q (rows, Hq*D), k and v (rows, Hkv*D), each with unit stride inside a row; cos, sin (rows, R) contiguous,
    R <= D the rotary width (partial rotary: dims R.. pass through); caches (slots, L, Hkv, D) with unit stride
    over D; q_norm_weight and k_norm_weight (D,), both or neither: per-head RMSNorms applied before the rotation
    (Qwen3). Returns rotated q (rows, Hq, D); writes k and v."""
    rows = q.shape[0]
    kv_heads = k.shape[1] // head_dim
    has_norm = q_norm_weight is not None
    if has_norm != (k_norm_weight is not None):
        raise ValueError("pass both q_norm_weight and k_norm_weight, or neither")
    q_out = torch.empty((rows, q_heads, head_dim), device=q.device, dtype=q.dtype)
    _rotary_to_cache_kernel[(rows, q_heads + kv_heads)](
        q, k, v, cos, sin, positions, q_out, k_cache, v_cache,
        q_norm_weight if has_norm else q, k_norm_weight if has_norm else k, eps,
        q.stride(0), k.stride(0), v.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        Q_HEADS=q_heads, HEAD_DIM=head_dim, ROTARY_DIM=cos.shape[-1], BLOCK=triton.next_power_of_2(head_dim),
        HAS_NORM=has_norm, num_warps=1,
    )
    return q_out


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, width, stride_gate_row, stride_up_row, BLOCK: tl.constexpr):
    """Grid (rows, width blocks); gate and up may be column slices of one packed projection output."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    gate = tl.load(gate_ptr + row * stride_gate_row + cols, mask=inside, other=0.0).to(tl.float32)
    activated = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty)  # rounded where F.silu rounds
    up = tl.load(up_ptr + row * stride_up_row + cols, mask=inside, other=0.0)
    result = activated.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * width + cols, result.to(out_ptr.dtype.element_ty), mask=inside)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for (rows, width) inputs with unit stride inside a row; returns a contiguous tensor."""
    if gate.stride(-1) != 1 or up.stride(-1) != 1:
        gate, up = gate.contiguous(), up.contiguous()
    rows, width = gate.shape
    out = torch.empty((rows, width), device=gate.device, dtype=gate.dtype)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(width, block))](
        gate, up, out, width, gate.stride(0), up.stride(0), BLOCK=block,
    )
    return out
