"""Forward selective scan: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = (C_t . h_t + D u_t) silu(z_t)``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import linear_recurrence_combine, silu, softplus
from .scan_config import FORWARD_TILES, ScanTiles, channel_block


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, initial_state_ptr,
    y_ptr, last_state_ptr, checkpoints_ptr,
    dim, length, n_chunks, channels_per_group,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr,
):
    """One program = one batch row x BLOCK_D channels (all in one B/C group), walking time chunk by chunk.

    Layouts: u, delta, z, y (batch, dim, L) with unit time stride; B, C (batch, G, N, L); A (dim, N);
    states (batch, dim, N) fp32; checkpoints (batch, dim, n_chunks, N) fp32 = the state before each chunk.
    """
    batch = tl.program_id(0).to(tl.int64)
    first_channel = tl.program_id(1) * BLOCK_D
    channels = first_channel + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    states = tl.arange(0, N)  # (N,)
    steps = tl.arange(0, CHUNK)  # (CHUNK,)
    group = first_channel // channels_per_group

    A = tl.load(A_ptr + channels[:, None] * N + states[None, :])  # (BLOCK_D, N)
    state_offsets = batch * dim * N + channels[:, None] * N + states[None, :]  # (BLOCK_D, N)
    if HAS_INITIAL_STATE:
        h = tl.load(initial_state_ptr + state_offsets)
    else:
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + channels).to(tl.float32)  # (BLOCK_D,)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channels).to(tl.float32)

    # Tiles put time first: (CHUNK, BLOCK_D, N). Triton's default layout spreads the last axes (states, then
    # channels) over lanes and warps, so each thread holds a whole chunk of one (channel, state) pair and the
    # scan over time runs sequentially in registers, with no shuffles; only the sum over N crosses lanes.
    u_cols = u_ptr + batch * stride_u_b + channels[None, :] * stride_u_d  # (1, BLOCK_D)
    delta_cols = delta_ptr + batch * stride_delta_b + channels[None, :] * stride_delta_d
    y_cols = y_ptr + batch * dim * length + channels[None, :] * length
    if HAS_Z:
        z_cols = z_ptr + batch * stride_z_b + channels[None, :] * stride_z_d
    B_cols = B_ptr + batch * stride_B_b + group * stride_B_g + states[None, :] * stride_B_n  # (1, N)
    C_cols = C_ptr + batch * stride_C_b + group * stride_C_g + states[None, :] * stride_C_n
    checkpoint_offsets = (batch * dim + channels[:, None]) * n_chunks * N + states[None, :]  # (BLOCK_D, N)

    for chunk in range(n_chunks):
        t = (chunk * CHUNK + steps)[:, None]  # (CHUNK, 1)
        in_seq = t < length
        u = tl.load(u_cols + t, mask=in_seq, other=0.0).to(tl.float32)  # (CHUNK, BLOCK_D)
        dt = tl.load(delta_cols + t, mask=in_seq, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt += delta_bias[None, :]
        if DELTA_SOFTPLUS:
            dt = softplus(dt)
        # dt = 0 past the end makes those steps the identity (decay 1, drive 0), so the state after the last
        # step of the chunk is the state after step L-1, and the backward can use the same convention.
        dt = tl.where(in_seq, dt, 0.0)
        B = tl.load(B_cols + t, mask=in_seq, other=0.0).to(tl.float32)  # (CHUNK, N)
        C = tl.load(C_cols + t, mask=in_seq, other=0.0).to(tl.float32)
        if STORE_CHECKPOINTS:
            tl.store(checkpoints_ptr + checkpoint_offsets + chunk * N, h)

        decay = tl.exp(dt[:, :, None] * A[None, :, :])  # (CHUNK, BLOCK_D, N)
        drive = (dt * u)[:, :, None] * B[:, None, :]  # (CHUNK, BLOCK_D, N)
        decay_prefix, local_states = tl.associative_scan((decay, drive), axis=0, combine_fn=linear_recurrence_combine)
        hs = local_states + decay_prefix * h[None, :, :]  # state after each step, (CHUNK, BLOCK_D, N)
        y = tl.sum(hs * C[:, None, :], axis=2)  # (CHUNK, BLOCK_D)
        h = tl.sum(tl.where(steps[:, None, None] == CHUNK - 1, hs, 0.0), axis=0)  # last step, (BLOCK_D, N)

        if HAS_D:
            y += D[None, :] * u
        if HAS_Z:
            z = tl.load(z_cols + t, mask=in_seq, other=0.0).to(tl.float32)
            y *= silu(z)
        tl.store(y_cols + t, y.to(y_ptr.dtype.element_ty), mask=in_seq)

    tl.store(last_state_ptr + state_offsets, h)


def selective_scan_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
    store_checkpoints: bool,
    tiles: ScanTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward scan. Returns ``y`` (u's dtype), the final state (batch, dim, N) fp32 and, when
    ``store_checkpoints``, the state before each chunk (batch, dim, n_chunks, N) fp32 for the backward.

    Expects what ``triton_backend`` prepares: unit time stride on u, delta, z, B, C; A (dim, N), D, delta_bias
    (dim,) and initial_state (batch, dim, N) contiguous fp32.
    """
    tiles = tiles or FORWARD_TILES
    batch, dim, length = u.shape
    groups, n_states = B.shape[1], B.shape[2]
    channels_per_group = dim // groups
    block_d = channel_block(channels_per_group, tiles.block_d)
    n_chunks = triton.cdiv(length, tiles.chunk)

    y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    last_state = torch.empty((batch, dim, n_states), device=u.device, dtype=torch.float32)
    checkpoints = (
        torch.empty((batch, dim, n_chunks, n_states), device=u.device, dtype=torch.float32) if store_checkpoints else None
    )
    z_arg = z if z is not None else u
    _selective_scan_fwd_kernel[(batch, dim // block_d)](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        initial_state if initial_state is not None else last_state,
        y, last_state, checkpoints if checkpoints is not None else last_state,
        dim, length, n_chunks, channels_per_group,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z_arg.stride(0), z_arg.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        N=n_states, BLOCK_D=block_d, CHUNK=tiles.chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_INITIAL_STATE=initial_state is not None,
        STORE_CHECKPOINTS=store_checkpoints,
        num_warps=tiles.num_warps,
    )
    return y, last_state, checkpoints
