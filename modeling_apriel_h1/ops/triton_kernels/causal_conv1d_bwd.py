"""Backward depthwise causal convolution: gradients for x, weight and bias.

With ``pre[q] = bias + sum_k w_k x[q - (W-1) + k]`` and ``g = dout * act'(pre)``:

    dx[p] = sum_s w_{W-1-s} g[p + s],   dw_k = sum_q g[q] x[q - (W-1) + k],   dbias = sum_q g[q]

The pre-activation is recomputed from x (W-wide windows, cached loads) instead of being stored. The gradient
of the conv state that preceded x is left to the caller (it touches only the first W-1 outputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .causal_conv1d_fwd import CONV_BLOCK_D, CONV_BLOCK_T, CONV_NUM_WARPS, conv_preactivation, conv_window
from .device_functions import silu_grad


@triton.jit
def _causal_conv1d_bwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, dout_ptr, dx_ptr, dweight_ptr, dbias_ptr,
    dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d, stride_dout_b, stride_dout_d,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr,
):
    """Grid (batch, dim blocks, time blocks). dx (batch, dim, L) contiguous in x's dtype; dweight (dim, WIDTH)
    and dbias (dim,) fp32, zeroed, accumulated atomically over batch rows and time blocks."""
    batch = tl.program_id(0).to(tl.int64)
    unclamped = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    in_dim = unclamped < dim
    channels = tl.minimum(unclamped, dim - 1)  # the tail block's extra rows repeat the last one, masked below
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
    x_rows = x_ptr + batch * stride_x_b + channels[:, None] * stride_x_d  # (BLOCK_D, 1)
    history_rows = history_ptr + batch * stride_h_b + channels[:, None] * stride_h_d
    dout_rows = dout_ptr + batch * stride_dout_b + channels[:, None] * stride_dout_d
    weight_rows = weight_ptr + channels * WIDTH  # (BLOCK_D,)

    dx = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    for s in tl.static_range(WIDTH):
        q = t + s  # the outputs that read x[t] through tap WIDTH-1-s
        dout = tl.load(dout_rows + q[None, :], mask=(q < length)[None, :], other=0.0).to(tl.float32)
        if SILU:
            pre = conv_preactivation(x_rows, history_rows, weight_rows, bias_ptr + channels, t, length, s,
                                     WIDTH, HAS_HISTORY, HAS_BIAS, BLOCK_D, BLOCK_T)
            g = dout * silu_grad(pre)  # (BLOCK_D, BLOCK_T)
        else:
            g = dout
        dx += tl.load(weight_rows + (WIDTH - 1 - s)).to(tl.float32)[:, None] * g
        if s == 0:  # this block owns outputs q = t: their contributions to dweight and dbias
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + channels, tl.sum(g, axis=1), mask=in_dim, sem="relaxed")
            for k in tl.static_range(WIDTH):
                x_k = conv_window(x_rows, history_rows, t, length, k - (WIDTH - 1), WIDTH, HAS_HISTORY)
                tl.atomic_add(dweight_ptr + channels * WIDTH + k, tl.sum(g * x_k, axis=1), mask=in_dim, sem="relaxed")
    tl.store(dx_ptr + batch * dim * length + channels[:, None] * length + t[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=in_dim[:, None] & (t < length)[None, :])


def causal_conv1d_backward(
    dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool,
    history: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward convolution; returns dx (x's dtype), dweight (dim, W) and dbias (dim,) in fp32."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    dx = torch.empty((batch, dim, length), device=x.device, dtype=x.dtype)
    dweight = torch.zeros((dim, width), device=x.device, dtype=torch.float32)
    dbias = torch.zeros((dim,), device=x.device, dtype=torch.float32) if bias is not None else None
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, CONV_BLOCK_D), triton.cdiv(length, CONV_BLOCK_T))
    _causal_conv1d_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, dout, dx, dweight,
        dbias if dbias is not None else dweight,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        dout.stride(0), dout.stride(1),
        WIDTH=width, BLOCK_D=CONV_BLOCK_D, BLOCK_T=CONV_BLOCK_T,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        num_warps=CONV_NUM_WARPS,
    )
    return dx, dweight, dbias
