"""One decoding step of the selective scan: ``h = exp(dt A) h + dt B x`` in place, ``y = (C . h + D x) silu(z)``.

Memory-bound: the fp32 state is read and written once and everything else is a few bytes per channel, so
the kernel's speed is judged in bytes per second against a device-to-device copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import silu, softplus, state_step

STEP_BLOCK_D = 16
STEP_NUM_WARPS = 2


@triton.jit
def _selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, y_ptr,
    dim, channels_per_group,
    stride_s_b, stride_s_d, stride_s_n, stride_x_b, stride_x_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    """Grid (batch, dim blocks). state (batch, dim, N) any strides (the caller's cache, updated where it
    lives); x, dt, z (batch, dim); B, C (batch, G, N); A (dim, N) contiguous fp32; y (batch, dim) contiguous."""
    batch = tl.program_id(0).to(tl.int64)
    unclamped = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    in_dim = unclamped < dim
    channels = tl.minimum(unclamped, dim - 1)
    states = tl.arange(0, N)  # (N,)
    groups = channels // channels_per_group  # (BLOCK_D,)

    state_ptrs = state_ptr + batch * stride_s_b + channels[:, None] * stride_s_d + states[None, :] * stride_s_n
    h = tl.load(state_ptrs).to(tl.float32)  # (BLOCK_D, N)
    x = tl.load(x_ptr + batch * stride_x_b + channels * stride_x_d).to(tl.float32)  # (BLOCK_D,)
    dt = tl.load(dt_ptr + batch * stride_dt_b + channels * stride_dt_d).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + channels).to(tl.float32)
    if DT_SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + channels[:, None] * N + states[None, :])  # (BLOCK_D, N)
    B = tl.load(B_ptr + batch * stride_B_b + groups[:, None] * stride_B_g + states[None, :] * stride_B_n).to(tl.float32)
    C = tl.load(C_ptr + batch * stride_C_b + groups[:, None] * stride_C_g + states[None, :] * stride_C_n).to(tl.float32)

    h, y = state_step(h, x, dt, A, B, C)  # y (BLOCK_D,)
    # Every thread must have read the old state before any thread of this program overwrites it.
    tl.debug_barrier()
    tl.store(state_ptrs, h.to(state_ptr.dtype.element_ty), mask=in_dim[:, None])

    if HAS_D:
        y += tl.load(D_ptr + channels).to(tl.float32) * x
    if HAS_Z:
        y *= silu(tl.load(z_ptr + batch * stride_z_b + channels * stride_z_d).to(tl.float32))
    tl.store(y_ptr + batch * dim + channels, y.to(y_ptr.dtype.element_ty), mask=in_dim)


def selective_state_update_step(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
) -> torch.Tensor:
    """Launch one scan decoding step; updates ``state`` in place and returns y (batch, dim) in x's dtype."""
    batch, dim = x.shape
    groups, n_states = B.shape[1], B.shape[2]
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    z_arg = z if z is not None else x
    _selective_state_update_kernel[(batch, triton.cdiv(dim, STEP_BLOCK_D))](
        state, x, dt, A, B, C, D if D is not None else A, z_arg, dt_bias if dt_bias is not None else A, y,
        dim, dim // groups,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
        z_arg.stride(0), z_arg.stride(1), B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        N=n_states, BLOCK_D=STEP_BLOCK_D,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
        num_warps=STEP_NUM_WARPS,
    )
    return y
