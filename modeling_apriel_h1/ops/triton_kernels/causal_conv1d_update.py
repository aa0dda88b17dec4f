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
    cache, updated where it lives); weight (dim, WIDTH) contiguous; out (batch, dim) contiguous."""
    batch = tl.program_id(0).to(tl.int64)
    unclamped = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    in_dim = unclamped < dim
    channels = tl.minimum(unclamped, dim - 1)
    taps = tl.arange(0, WIDTH_POW2)  # (WIDTH_POW2,)
    state_rows = state_ptr + batch * stride_s_b + channels[:, None] * stride_s_d  # (BLOCK_D, 1)

    # new_state[k] = state[k + 1] for k < WIDTH - 1, and x for the newest tap.
    shifted = tl.load(state_rows + (taps[None, :] + 1) * stride_s_w, mask=(taps + 1 < WIDTH)[None, :], other=0.0)
    x = tl.load(x_ptr + batch * stride_x_b + channels * stride_x_d)  # (BLOCK_D,)
    new_state = tl.where((taps == WIDTH - 1)[None, :], x[:, None].to(shifted.dtype), shifted)  # (BLOCK_D, WIDTH_POW2)
    # The load above reads entries that the store below overwrites, held by other threads of this program.
    tl.debug_barrier()
    tl.store(state_rows + taps[None, :] * stride_s_w, new_state, mask=in_dim[:, None] & (taps < WIDTH)[None, :])

    weight = tl.load(weight_ptr + channels[:, None] * WIDTH + taps[None, :], mask=(taps < WIDTH)[None, :], other=0.0)
    out = tl.sum(new_state.to(tl.float32) * weight.to(tl.float32), axis=1)  # (BLOCK_D,)
    if HAS_BIAS:
        out += tl.load(bias_ptr + channels).to(tl.float32)
    if SILU:
        out = silu(out)
    tl.store(out_ptr + batch * dim + channels, out.to(out_ptr.dtype.element_ty), mask=in_dim)


def causal_conv1d_update_step(
    x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool
) -> torch.Tensor:
    """Launch one conv decoding step; updates ``conv_state`` in place and returns the output (batch, dim)."""
    batch, dim = x.shape
    width = weight.shape[1]
    out = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    _causal_conv1d_update_kernel[(batch, triton.cdiv(dim, UPDATE_BLOCK_D))](
        x, conv_state, weight, bias if bias is not None else weight, out,
        dim, x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        WIDTH=width, WIDTH_POW2=triton.next_power_of_2(width), BLOCK_D=UPDATE_BLOCK_D,
        HAS_BIAS=bias is not None, SILU=silu_activation,
        num_warps=UPDATE_NUM_WARPS,
    )
    return out
