"""Forward selective scan: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = (C_t . h_t + D u_t) silu(z_t)``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import LOG2E, linear_recurrence_combine, silu, softplus
from .scan_config import FORWARD_TILES, ScanTiles, channel_block, state_slots


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, initial_state_ptr,
    y_ptr, last_state_ptr, states_ptr,
    dim, length, n_chunks, n_slots, channels_per_group,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr,
):
    """One program = one batch row x BLOCK_D channels (all in one B/C group), walking time chunk by chunk.

    Tiles are (BLOCK_D, CHUNK): time is the contiguous axis, loaded as wide vectors, and each thread holds a
    run of consecutive steps, so the scan is sequential in registers and then log-depth across lanes. The N
    states are a static loop: per state, one scan of the chunk and one FMA into y, so the per-(channel, step)
    work (softplus, gate, loads) is done once, not once per state, and y needs no reduction across threads.

    Layouts: u, delta, z, y (batch, dim, L) with unit time stride; B, C (batch, G, N, L); A (dim, N);
    ``states`` (batch, dim, n_slots, N) fp32: slot c holds the state before chunk c. The state crosses chunk
    boundaries through it (the threads holding a chunk's last step write it, all threads read it after a
    barrier); with STORE_CHECKPOINTS every chunk keeps its slot for the backward, else two slots alternate.
    """
    batch = tl.program_id(0).to(tl.int64)
    first_channel = tl.program_id(1) * BLOCK_D
    channels = first_channel + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    steps = tl.arange(0, CHUNK)  # (CHUNK,)
    states = tl.arange(0, N)  # (N,)
    group = first_channel // channels_per_group

    state_rows = states_ptr + (batch * dim + channels) * n_slots * N  # (BLOCK_D,)
    if HAS_INITIAL_STATE:
        h0 = tl.load(initial_state_ptr + (batch * dim + channels[:, None]) * N + states[None, :])
    else:
        h0 = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    tl.store(state_rows[:, None] + states[None, :], h0)  # slot 0
    tl.debug_barrier()

    if HAS_D:
        D = tl.load(D_ptr + channels).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channels).to(tl.float32)
    u_rows = u_ptr + batch * stride_u_b + channels[:, None] * stride_u_d  # (BLOCK_D, 1)
    delta_rows = delta_ptr + batch * stride_delta_b + channels[:, None] * stride_delta_d
    y_rows = y_ptr + batch * dim * length + channels[:, None] * length
    if HAS_Z:
        z_rows = z_ptr + batch * stride_z_b + channels[:, None] * stride_z_d
    B_rows = B_ptr + batch * stride_B_b + group * stride_B_g + channels[:, None] * 0  # (BLOCK_D, 1), + n, t
    C_rows = C_ptr + batch * stride_C_b + group * stride_C_g + channels[:, None] * 0

    for chunk in range(n_chunks):
        slot = chunk if STORE_CHECKPOINTS else chunk % 2
        next_slot = chunk + 1 if STORE_CHECKPOINTS else (chunk + 1) % 2
        t = chunk * CHUNK + steps  # (CHUNK,)
        in_seq = (t < length)[None, :]  # (1, CHUNK)
        u = tl.load(u_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)  # (BLOCK_D, CHUNK)
        dt = tl.load(delta_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt = softplus(dt)
        # dt = 0 past the end makes those steps the identity (decay 1, drive 0), so the state after the last
        # step of the chunk is the state after step L-1, and the backward can use the same convention.
        dt = tl.where(in_seq, dt, 0.0)
        dt_u = dt * u
        y = D[:, None] * u if HAS_D else tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)

        for n in tl.static_range(N):
            A_n = tl.load(A_ptr + channels * N + n) * LOG2E  # (BLOCK_D,), so that exp(dt A) = exp2(dt A_n)
            # B and C rows are loaded once per channel row (L1 hits) so that they arrive in the tile's layout.
            B_n = tl.load(B_rows + n * stride_B_n + t[None, :], mask=in_seq, other=0.0).to(tl.float32)  # (BLOCK_D, CHUNK)
            C_n = tl.load(C_rows + n * stride_C_n + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
            h_n = tl.load(state_rows + slot * N + n)  # (BLOCK_D,)
            decay = tl.exp2(dt * A_n[:, None])  # (BLOCK_D, CHUNK)
            drive = dt_u * B_n
            decay_prefix, local_states = tl.associative_scan((decay, drive), axis=1, combine_fn=linear_recurrence_combine)
            hs = local_states + decay_prefix * h_n[:, None]  # state n after each step
            y += hs * C_n
            h_last = tl.gather(hs, tl.full((BLOCK_D, 1), CHUNK - 1, tl.int32), axis=1)  # (BLOCK_D, 1)
            tl.store(state_rows[:, None] + next_slot * N + n, h_last)

        if HAS_Z:
            z = tl.load(z_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
            y *= silu(z)
        tl.store(y_rows + t[None, :], y.to(y_ptr.dtype.element_ty), mask=in_seq)
        tl.debug_barrier()  # the next chunk reads the state slot written above, from other threads

    final_slot = n_chunks if STORE_CHECKPOINTS else n_chunks % 2
    h = tl.load(state_rows[:, None] + final_slot * N + states[None, :])  # (BLOCK_D, N)
    tl.store(last_state_ptr + (batch * dim + channels[:, None]) * N + states[None, :], h)


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
    ``store_checkpoints``, the state before each chunk, (batch, dim, n_chunks + 1, N) fp32, for the backward.

    Expects what ``triton_backend`` prepares: unit time stride on u, delta, z, B, C; A (dim, N), D, delta_bias
    (dim,) and initial_state (batch, dim, N) contiguous fp32.
    """
    tiles = tiles or FORWARD_TILES
    batch, dim, length = u.shape
    groups, n_states = B.shape[1], B.shape[2]
    channels_per_group = dim // groups
    block_d = channel_block(channels_per_group, tiles.block_d)
    n_chunks = triton.cdiv(length, tiles.chunk)
    n_slots = state_slots(n_chunks, store_checkpoints)

    y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    last_state = torch.empty((batch, dim, n_states), device=u.device, dtype=torch.float32)
    states = torch.empty((batch, dim, n_slots, n_states), device=u.device, dtype=torch.float32)
    z_arg = z if z is not None else u
    _selective_scan_fwd_kernel[(batch, dim // block_d)](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        initial_state if initial_state is not None else last_state,
        y, last_state, states,
        dim, length, n_chunks, n_slots, channels_per_group,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z_arg.stride(0), z_arg.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        N=n_states, BLOCK_D=block_d, CHUNK=tiles.chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_INITIAL_STATE=initial_state is not None,
        STORE_CHECKPOINTS=store_checkpoints,
        num_warps=tiles.num_warps,
    )
    return y, last_state, states if store_checkpoints else None
