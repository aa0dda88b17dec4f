"""One decoding step of the depthwise causal convolution: shift the new input into the conv state (in place)
and return ``act(bias + sum_k w_k state_k)`` for the new state."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import silu

UPDATE_BLOCK_D = 64
UPDATE_NUM_WARPS = 2


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, weight_ptr, bias_ptr, out_ptr,
    dim, stride_x_b, stride_x_d, stride_s_b, stride_s_d, stride_s_w,
    WIDTH: tl.constexpr, WIDTH_POW2: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    """Grid (batch, dim blocks). x (batch, dim); state (batch, dim, WIDTH) any strides (it is the caller's
    cache, updated where it lives); weight (dim, WIDTH) contiguous; out (batch, dim) contiguous.

    Each channel's window is read once, whole and aligned, and written back one tap to the left with x in
    the newest tap: ``new[k] = old[k + 1]``, so ``out = sum_{k >= 1} w[k - 1] old[k] + w[W - 1] x``.
    """
    batch = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    in_dim = channels < dim
    taps = tl.arange(0, WIDTH_POW2)  # (WIDTH_POW2,)
    is_tap = (taps < WIDTH)[None, :]
    survives = in_dim[:, None] & (taps >= 1)[None, :] & is_tap  # old taps 1..W-1 move one to the left
    state_rows = state_ptr + batch * stride_s_b + channels[:, None] * stride_s_d  # (BLOCK_D, 1)

    old = tl.load(state_rows + taps[None, :] * stride_s_w, mask=in_dim[:, None] & is_tap, other=0.0)
    x = tl.load(x_ptr + batch * stride_x_b + channels * stride_x_d, mask=in_dim, other=0.0)  # (BLOCK_D,)
    # weight of tap k - 1 beside old tap k (tap 0 leaves the window)
    weight_rows = weight_ptr + channels[:, None] * WIDTH
    shifted_weight = tl.load(weight_rows + taps[None, :] - 1, mask=survives, other=0.0)
    newest_weight = tl.load(weight_ptr + channels * WIDTH + WIDTH - 1, mask=in_dim, other=0.0)
    out = tl.sum(old.to(tl.float32) * shifted_weight.to(tl.float32), axis=1) + x.to(tl.float32) * newest_weight.to(tl.float32)
    if HAS_BIAS:
        out += tl.load(bias_ptr + channels, mask=in_dim, other=0.0).to(tl.float32)
    if SILU:
        out = silu(out)
    # Triton may split a window over threads: all of them must have read it before any shifts it.
    tl.debug_barrier()
    tl.store(state_rows + (taps[None, :] - 1) * stride_s_w, old, mask=survives)
    tl.store(state_rows + (WIDTH - 1) * stride_s_w, x[:, None].to(old.dtype), mask=in_dim[:, None])
    tl.store(out_ptr + batch * dim + channels, out.to(out_ptr.dtype.element_ty), mask=in_dim)


def causal_conv1d_update_step(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    silu_activation: bool,
    block_d: int = UPDATE_BLOCK_D,
    num_warps: int = UPDATE_NUM_WARPS,
) -> torch.Tensor:
    """Launch one conv decoding step; updates ``conv_state`` in place and returns the output (batch, dim)."""
    batch, dim = x.shape
    width = weight.shape[1]
    out = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    _causal_conv1d_update_kernel[(batch, triton.cdiv(dim, block_d))](
        x, conv_state, weight, bias if bias is not None else weight, out,
        dim, x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        WIDTH=width, WIDTH_POW2=triton.next_power_of_2(width), BLOCK_D=block_d,
        HAS_BIAS=bias is not None, SILU=silu_activation,
        num_warps=num_warps,
    )
    return out
