"""Forward depthwise causal convolution: ``out[d, t] = act(bias[d] + sum_k w[d, k] x[d, t - (W-1) + k])``.

Inputs before the sequence start come from the conv state (the last W inputs of the previous call), so a
continued prefill sees the same context as one long call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import silu

CONV_BLOCK_D = 16
CONV_BLOCK_T = 128
CONV_NUM_WARPS = 4


@triton.jit
def conv_window(x_rows, history_rows, t, length, shift, WIDTH: tl.constexpr, HAS_HISTORY: tl.constexpr):
    """Inputs at positions ``t + shift`` (BLOCK_D, BLOCK_T) in fp32: x where 0 <= p < L, the conv state's
    entry ``WIDTH + p`` where p < 0 (the state holds the last WIDTH inputs, oldest first), else 0."""
    p = t + shift  # (BLOCK_T,)
    window = tl.load(x_rows + p[None, :], mask=((p >= 0) & (p < length))[None, :], other=0.0).to(tl.float32)
    if HAS_HISTORY:
        window += tl.load(history_rows + WIDTH + p[None, :], mask=(p < 0)[None, :], other=0.0).to(tl.float32)
    return window


@triton.jit
def conv_preactivation(x_rows, history_rows, weight_rows, bias_rows, t, length, shift,
                       WIDTH: tl.constexpr, HAS_HISTORY: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """``bias + sum_k w_k x[t + shift - (WIDTH-1) + k]`` (BLOCK_D, BLOCK_T), fp32: the conv output at t + shift.

    ``weight_rows``/``bias_rows`` (BLOCK_D,) point at each channel's weights/bias."""
    acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_rows).to(tl.float32)[:, None]
    for k in tl.static_range(WIDTH):
        w_k = tl.load(weight_rows + k).to(tl.float32)  # (BLOCK_D,)
        acc += w_k[:, None] * conv_window(x_rows, history_rows, t, length, shift - (WIDTH - 1) + k, WIDTH, HAS_HISTORY)
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, out_ptr,
    dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr,
):
    """Grid (batch, dim blocks, time blocks). x (batch, dim, L) unit time stride; weight (dim, WIDTH)
    contiguous; history (batch, dim, WIDTH) unit last stride; out (batch, dim, L) contiguous."""
    batch = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
    channels = tl.minimum(channels, dim - 1)  # clamp the tail block onto real rows; its stores are masked
    x_rows = x_ptr + batch * stride_x_b + channels[:, None] * stride_x_d  # (BLOCK_D, 1)
    history_rows = history_ptr + batch * stride_h_b + channels[:, None] * stride_h_d
    out = conv_preactivation(x_rows, history_rows, weight_ptr + channels * WIDTH, bias_ptr + channels, t, length, 0,
                             WIDTH, HAS_HISTORY, HAS_BIAS, BLOCK_D, BLOCK_T)
    if SILU:
        out = silu(out)
    in_block = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D) < dim)[:, None] & (t < length)[None, :]
    tl.store(out_ptr + batch * dim * length + channels[:, None] * length + t[None, :],
             out.to(out_ptr.dtype.element_ty), mask=in_block)


def causal_conv1d_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool,
    history: torch.Tensor | None,
) -> torch.Tensor:
    """Launch the forward convolution; returns the output (batch, dim, L) in x's dtype."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.empty((batch, dim, length), device=x.device, dtype=x.dtype)
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, CONV_BLOCK_D), triton.cdiv(length, CONV_BLOCK_T))
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, out,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        WIDTH=width, BLOCK_D=CONV_BLOCK_D, BLOCK_T=CONV_BLOCK_T,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        num_warps=CONV_NUM_WARPS,
    )
    return out
