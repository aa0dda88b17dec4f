"""Forward selective scan: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = (C_t . h_t + D u_t) silu(z_t)``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import LOG2E, linear_recurrence_combine, silu, softplus
from .scan_config import SCAN_TILES, ScanTiles

FLT_MIN: tl.constexpr = tl.constexpr(1.1754943508222875e-38)  # the smallest normal fp32


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, initial_state_ptr, starts_ptr,
    y_ptr, last_state_ptr, states_ptr,
    dim, length, n_chunks, channels_per_group,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr, HAS_DOCUMENT_STARTS: tl.constexpr,
):
    """One program = one batch row x one channel, walking time chunk by chunk with (N, CHUNK) tiles.

    Time is the contiguous axis, loaded as wide vectors, and each thread holds a run of consecutive steps, so
    the scan is sequential in registers and then log-depth across lanes. The state between chunks stays in
    registers (N,). Layouts: u, delta, z, y (batch, dim, L) with unit time stride; B, C (batch, G, N, L);
    A (dim, N); with STORE_CHECKPOINTS, ``states`` (batch, dim, n_chunks + 1, N) fp32 receives the state
    before each chunk (slot c) and the final state (slot n_chunks) for the backward. With HAS_DOCUMENT_STARTS,
    ``starts`` (batch, L) uint8 marks the steps where a packed document begins: their decay is 0, so the state
    restarts there (the only change; without starts the kernel compiles as before). A is negative, as Mamba's
    ``-exp(A_log)`` always is (``reference.selective_scan``); 0 is taken too.
    """
    batch = tl.program_id(0).to(tl.int64)
    channel = tl.program_id(1)
    steps = tl.arange(0, CHUNK)  # (CHUNK,)
    states = tl.arange(0, N)  # (N,)
    group = channel // channels_per_group
    row = batch * dim + channel
    is_last_step = (steps == CHUNK - 1)[None, :]  # (1, CHUNK)

    A_log2 = tl.load(A_ptr + channel * N + states) * LOG2E  # (N,), so that exp(dt A) = exp2(dt A_log2)
    if HAS_DOCUMENT_STARTS:  # A = 0 (decay 1) as the smallest negative A_log2, which keeps decay 1 and inf * A < 0
        A_log2 = tl.minimum(A_log2, -FLT_MIN)
    if HAS_INITIAL_STATE:
        h = tl.load(initial_state_ptr + row * N + states)  # (N,)
    else:
        h = tl.zeros((N,), dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + channel).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channel).to(tl.float32)
    checkpoint_row = states_ptr + row * (n_chunks + 1) * N
    u_row = u_ptr + batch * stride_u_b + channel * stride_u_d
    delta_row = delta_ptr + batch * stride_delta_b + channel * stride_delta_d
    if HAS_Z:
        z_row = z_ptr + batch * stride_z_b + channel * stride_z_d
    B_tile = B_ptr + batch * stride_B_b + group * stride_B_g + states[:, None] * stride_B_n  # (N, 1), + t
    C_tile = C_ptr + batch * stride_C_b + group * stride_C_g + states[:, None] * stride_C_n

    for chunk in range(n_chunks):
        if STORE_CHECKPOINTS:
            tl.store(checkpoint_row + chunk * N + states, h)
        t = chunk * CHUNK + steps  # (CHUNK,)
        in_seq = t < length
        u = tl.load(u_row + t, mask=in_seq, other=0.0).to(tl.float32)  # (CHUNK,)
        dt = tl.load(delta_row + t, mask=in_seq, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt += delta_bias
        if DELTA_SOFTPLUS:
            dt = softplus(dt)
        # dt = 0 past the end makes those steps the identity (decay 1, drive 0), so the state after the last
        # step of the chunk is the state after step L-1, and the backward can use the same convention.
        dt = tl.where(in_seq, dt, 0.0)
        B = tl.load(B_tile + t[None, :], mask=in_seq[None, :], other=0.0).to(tl.float32)  # (N, CHUNK)
        C = tl.load(C_tile + t[None, :], mask=in_seq[None, :], other=0.0).to(tl.float32)
        if HAS_DOCUMENT_STARTS:
            # dt read as +inf at a start makes its decay exp2(-inf) = 0 (A_log2 < 0): one select on the (CHUNK,)
            # dt before it is spread over the states, where adding a -inf reset had cost a second such spreading
            starts = tl.load(starts_ptr + batch * length + t, mask=in_seq, other=0)
            decay = tl.exp2(tl.where(starts != 0, float("inf"), dt)[None, :] * A_log2[:, None])
        else:
            decay = tl.exp2(dt[None, :] * A_log2[:, None])
        drive = (dt * u)[None, :] * B
        decay_prefix, local_states = tl.associative_scan((decay, drive), axis=1, combine_fn=linear_recurrence_combine)
        hs = local_states + decay_prefix * h[:, None]  # (N, CHUNK): the state after each step
        h = tl.sum(tl.where(is_last_step, hs, 0.0), axis=1)
        y = tl.sum(hs * C, axis=0)  # (CHUNK,)
        if HAS_D:
            y += D * u
        if HAS_Z:
            y *= silu(tl.load(z_row + t, mask=in_seq, other=0.0).to(tl.float32))
        tl.store(y_ptr + row * length + t, y.to(y_ptr.dtype.element_ty), mask=in_seq)

    tl.store(last_state_ptr + row * N + states, h)
    if STORE_CHECKPOINTS:
        tl.store(checkpoint_row + n_chunks * N + states, h)


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
    document_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward scan. Returns ``y`` (u's dtype), the final state (batch, dim, N) fp32 and, when
    ``store_checkpoints``, the state before each chunk, (batch, dim, n_chunks + 1, N) fp32, for the backward.

    Expects what ``triton_backend`` prepares: unit time stride on u, delta, z, B, C; A (dim, N), D, delta_bias
    (dim,) and initial_state (batch, dim, N) contiguous fp32; document_starts (batch, L) contiguous uint8.
    """
    tiles = tiles or SCAN_TILES
    batch, dim, length = u.shape
    groups, n_states = B.shape[1], B.shape[2]
    channels_per_group = dim // groups
    n_chunks = triton.cdiv(length, tiles.chunk)

    y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    last_state = torch.empty((batch, dim, n_states), device=u.device, dtype=torch.float32)
    states = torch.empty((batch, dim, n_chunks + 1, n_states), device=u.device, dtype=torch.float32) if store_checkpoints else None
    z_arg = z if z is not None else u
    _selective_scan_fwd_kernel[(batch, dim)](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        initial_state if initial_state is not None else last_state,
        document_starts if document_starts is not None else last_state,
        y, last_state, states if states is not None else last_state,
        dim, length, n_chunks, channels_per_group,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z_arg.stride(0), z_arg.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        N=n_states, CHUNK=tiles.chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_INITIAL_STATE=initial_state is not None,
        STORE_CHECKPOINTS=store_checkpoints, HAS_DOCUMENT_STARTS=document_starts is not None,
        num_warps=tiles.forward_num_warps,
    )
    return y, last_state, states
