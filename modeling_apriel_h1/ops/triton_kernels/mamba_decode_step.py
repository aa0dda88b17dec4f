"""A Mamba layer's whole recurrent decoding step in one kernel: the KV-width input widened to the full width,
the depthwise conv step and the selective-state update with its gate.

Why: the decode engine's step at batch 32-73 spends as long on a Mamba layer's small kernels (repeat copy of x,
conv update, state update) as on reading its state. Here each program reads its channels' conv window and fp32
state once and writes both back once. It reads x and B at their KV width (``d_xb``, as ``in_proj`` produces them):
channel ``c`` takes x from ``(c // (N * repeat)) * N + c % N`` (Apriel-H1's repetition of groups of ``N``
channels) and B from group ``c // (dim / B groups)``, C from group ``c // (dim / C groups)``, so no widened copy
is ever written. The conv output is rounded to the activations' dtype before the scan reads it, where the
module path (``causal_conv1d_update`` then ``selective_state_update``) rounds it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import silu, softplus, state_step


def step_block_d(batch: int) -> int:
    """Channels per program, from a sweep at Apriel-H1-15B's widths on an H200 (benchmarks/decode_kernel_tiles.py):
    64 at serving batches (73 rows: 12.9 us against 15.5 with 16), 16 for a few rows (enough programs)."""
    return 64 if batch >= 16 else 16


STEP_NUM_WARPS = 2


@triton.jit
def _mamba_decode_step_kernel(
    conv_state_ptr, ssm_state_ptr, x_ptr, z_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr,
    conv_weight_ptr, conv_bias_ptr, y_ptr,
    dim, x_repeat, channels_per_B_group, channels_per_C_group,
    stride_cs_b, stride_cs_d, stride_cs_w, stride_ss_b, stride_ss_d, stride_ss_n,
    stride_x_b, stride_z_b, stride_dt_b, stride_B_b, stride_C_b,
    N: tl.constexpr, WIDTH: tl.constexpr, WIDTH_POW2: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):
    """Grid (batch, dim blocks). conv_state (batch, dim, WIDTH) and ssm_state (batch, dim, N) any strides (the
    caller's slots, updated where they live); x (batch, dim / x_repeat), z and dt (batch, dim), B (batch, groups_B
    * N), C (batch, groups_C * N): unit stride inside a row; A (dim, N) fp32 and conv weight (dim, WIDTH)
    contiguous; y (batch, dim) contiguous."""
    batch = tl.program_id(0).to(tl.int64)
    unclamped = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    in_dim = unclamped < dim
    channels = tl.minimum(unclamped, dim - 1)
    states = tl.arange(0, N)  # (N,)

    # --- conv step on the widened input
    source = (channels // (N * x_repeat)) * N + channels % N  # the x channel widened into this one
    x_new = tl.load(x_ptr + batch * stride_x_b + source)  # (BLOCK_D,)
    taps = tl.arange(0, WIDTH_POW2)
    is_tap = (taps < WIDTH)[None, :]
    survives = in_dim[:, None] & (taps >= 1)[None, :] & is_tap  # old taps 1..W-1 move one to the left
    window_ptrs = conv_state_ptr + batch * stride_cs_b + channels[:, None] * stride_cs_d
    old = tl.load(window_ptrs + taps[None, :] * stride_cs_w, mask=is_tap, other=0.0)  # (BLOCK_D, WIDTH_POW2)
    # weight of tap k - 1 beside old tap k (tap 0 leaves the window)
    shifted_weight = tl.load(conv_weight_ptr + channels[:, None] * WIDTH + taps[None, :] - 1, mask=survives, other=0.0)
    newest_weight = tl.load(conv_weight_ptr + channels * WIDTH + WIDTH - 1)
    conv = tl.sum(old.to(tl.float32) * shifted_weight.to(tl.float32), axis=1)
    conv += x_new.to(tl.float32) * newest_weight.to(tl.float32)
    if HAS_CONV_BIAS:
        conv += tl.load(conv_bias_ptr + channels).to(tl.float32)
    x = silu(conv).to(x_ptr.dtype.element_ty).to(tl.float32)  # rounded where the module path stores it

    # --- selective-state update and gate
    state_ptrs = ssm_state_ptr + batch * stride_ss_b + channels[:, None] * stride_ss_d + states[None, :] * stride_ss_n
    h = tl.load(state_ptrs).to(tl.float32)  # (BLOCK_D, N)
    dt = tl.load(dt_ptr + batch * stride_dt_b + channels).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + channels).to(tl.float32)
    if DT_SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + channels[:, None] * N + states[None, :])
    B_rows = (channels // channels_per_B_group)[:, None] * N + states[None, :]
    C_rows = (channels // channels_per_C_group)[:, None] * N + states[None, :]
    B = tl.load(B_ptr + batch * stride_B_b + B_rows).to(tl.float32)
    C = tl.load(C_ptr + batch * stride_C_b + C_rows).to(tl.float32)
    h, y = state_step(h, x, dt, A, B, C)
    if HAS_D:
        y += tl.load(D_ptr + channels).to(tl.float32) * x
    y *= silu(tl.load(z_ptr + batch * stride_z_b + channels).to(tl.float32))

    # Every thread must have read the old window and state before any thread of this program overwrites them.
    tl.debug_barrier()
    tl.store(window_ptrs + (taps[None, :] - 1) * stride_cs_w, old, mask=survives)
    tl.store(window_ptrs + (WIDTH - 1) * stride_cs_w, x_new[:, None].to(old.dtype), mask=in_dim[:, None])
    tl.store(state_ptrs, h.to(ssm_state_ptr.dtype.element_ty), mask=in_dim[:, None])
    tl.store(y_ptr + batch * dim + channels, y.to(y_ptr.dtype.element_ty), mask=in_dim)


def mamba_decode_step(
    conv_state: torch.Tensor, ssm_state: torch.Tensor, x: torch.Tensor, z: torch.Tensor, dt: torch.Tensor,
    A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, dt_bias: torch.Tensor | None,
    conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, dt_softplus: bool = True,
    block_d: int | None = None, num_warps: int = STEP_NUM_WARPS,
) -> torch.Tensor:
    """One decoding step of a Mamba mixer after its input projection; updates both states in place.

    conv_state (batch, dim, width), ssm_state (batch, dim, N); x (batch, d_xb) and B (batch, d_xb) at KV width,
    z, dt and C (batch, dim) (column slices of one projection output are fine); A = -exp(A_log) (dim, N) fp32.
    Returns y (batch, dim) in x's dtype, ready for ``out_proj``. ``block_d`` and ``num_warps`` are for sweeps.
    """
    batch, dim = z.shape
    n_states = A.shape[1]
    for name, tensor in (("x", x), ("z", z), ("dt", dt), ("B", B), ("C", C)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"mamba_decode_step needs unit stride inside a row of {name}")
    block_d = block_d or step_block_d(batch)
    y = torch.empty((batch, dim), device=z.device, dtype=x.dtype)
    width = conv_weight.shape[1]
    _mamba_decode_step_kernel[(batch, triton.cdiv(dim, block_d))](
        conv_state, ssm_state, x, z, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A,
        conv_weight, conv_bias if conv_bias is not None else conv_weight, y,
        dim, dim // x.shape[1], dim // (B.shape[1] // n_states), dim // (C.shape[1] // n_states),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2),
        x.stride(0), z.stride(0), dt.stride(0), B.stride(0), C.stride(0),
        N=n_states, WIDTH=width, WIDTH_POW2=triton.next_power_of_2(width), BLOCK_D=block_d,
        HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=dt_softplus, num_warps=num_warps,
    )
    return y
