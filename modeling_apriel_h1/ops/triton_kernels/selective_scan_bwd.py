"""Backward selective scan: gradients for u, delta, A, B, C, D, z, delta_bias and the initial state.

With ``a_t = exp(dt_t A)``, ``b_t = dt_t B_t u_t`` and ``h_t = a_t h_{t-1} + b_t``, the gradient of the loss
with respect to the states obeys the reverse recurrence

    dh_t = C_t * dy_ssm_t + a_{t+1} dh_{t+1}        (dh_{L-1} also receives the final-state gradient)

which is the same affine recurrence run backwards, so it uses the forward's combine in a reverse scan. A
program walks the chunks from last to first, rebuilds each chunk's states from the checkpoint the forward
stored, and carries ``dh`` from one chunk to the one before. From ``dh`` and ``h``:

    d(dt A)_t = dh_t * a_t h_{t-1} = dh_t * (h_t - b_t)      (no shift, no division by a_t)
    dA += d(dt A)_t dt_t;   d dt_t = sum_n d(dt A)_t A + (dh_t . B_t) u_t;   du_t = (dh_t . B_t) dt_t + D dy_ssm_t
    dB_t += sum_channels dh_t dt_t u_t;   dC_t += sum_channels h_t dy_ssm_t
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device_functions import LOG2E, linear_recurrence_combine, sigmoid, silu, silu_grad, softplus
from .scan_config import BACKWARD_TILES, ScanTiles, channel_block, state_slots


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, states_ptr, dy_ptr, d_last_state_ptr,
    du_ptr, d_delta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr, d_delta_bias_partial_ptr,
    d_initial_state_ptr, dh_carry_ptr,
    dim, length, n_chunks, n_slots, channels_per_group, groups,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n, stride_dy_b, stride_dy_d,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_D_LAST_STATE: tl.constexpr, WANTS_D_INITIAL_STATE: tl.constexpr,
):
    """One program = one batch row x BLOCK_D channels (one B/C group), walking the chunks backwards.

    Same (BLOCK_D, CHUNK) tiles and static loop over the N states as the forward. ``states`` is the
    forward's (batch, dim, n_slots, N) buffer (slot c = state before chunk c); ``dh_carry`` (batch, dim, 2, N)
    fp32 carries dh across chunk boundaries (two slots used alternately, a barrier after each chunk).
    du, d_delta, dz (batch, dim, L) contiguous; dB, dC (batch, G, N, L), dA (batch, dim, N) fp32, zeroed,
    accumulated atomically; dD, d_delta_bias (batch, dim) fp32 per-batch partials the launcher sums.
    """
    batch = tl.program_id(0).to(tl.int64)
    first_channel = tl.program_id(1) * BLOCK_D
    channels = first_channel + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    steps = tl.arange(0, CHUNK)  # (CHUNK,)
    states = tl.arange(0, N)  # (N,)
    group = first_channel // channels_per_group
    is_last_step = (steps == CHUNK - 1)[None, :]  # (1, CHUNK)

    carry_rows = dh_carry_ptr + (batch * dim + channels) * 2 * N  # (BLOCK_D,)
    state_offsets = (batch * dim + channels[:, None]) * N + states[None, :]  # (BLOCK_D, N)
    if HAS_D_LAST_STATE:
        dh_end = tl.load(d_last_state_ptr + state_offsets)
    else:
        dh_end = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    tl.store(carry_rows[:, None] + states[None, :], dh_end)  # slot 0: dh at the step after the last chunk
    tl.debug_barrier()

    if HAS_D:
        D = tl.load(D_ptr + channels).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channels).to(tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    d_delta_bias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    state_rows = states_ptr + (batch * dim + channels) * n_slots * N  # (BLOCK_D,)
    u_rows = u_ptr + batch * stride_u_b + channels[:, None] * stride_u_d  # (BLOCK_D, 1)
    delta_rows = delta_ptr + batch * stride_delta_b + channels[:, None] * stride_delta_d
    dy_rows = dy_ptr + batch * stride_dy_b + channels[:, None] * stride_dy_d
    grad_rows = batch * dim * length + channels[:, None] * length  # offsets into du, d_delta, dz
    if HAS_Z:
        z_rows = z_ptr + batch * stride_z_b + channels[:, None] * stride_z_d
    B_rows = B_ptr + batch * stride_B_b + group * stride_B_g + channels[:, None] * 0  # (BLOCK_D, 1), + n, t
    C_rows = C_ptr + batch * stride_C_b + group * stride_C_g + channels[:, None] * 0
    dBC_row = ((batch * groups + group) * N) * length  # offset of (batch, group, n=0, t=0) in dB, dC

    for reverse_chunk in range(n_chunks):
        chunk = n_chunks - 1 - reverse_chunk
        carry_slot = reverse_chunk % 2
        next_carry_slot = (reverse_chunk + 1) % 2
        t = chunk * CHUNK + steps  # (CHUNK,)
        in_seq = (t < length)[None, :]  # (1, CHUNK)
        next_in_seq = (t + 1 < length)[None, :]
        u = tl.load(u_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)  # (BLOCK_D, CHUNK)
        dt_raw = tl.load(delta_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
        dt_next = tl.load(delta_rows + t[None, :] + 1, mask=next_in_seq, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt_raw += delta_bias[:, None]
            dt_next += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt = softplus(dt_raw)
            dt_next = softplus(dt_next)
        else:
            dt = dt_raw
        # As in the forward, dt = 0 past the end: those steps pass the state (and dh) through unchanged.
        dt = tl.where(in_seq, dt, 0.0)
        dt_next = tl.where(next_in_seq, dt_next, 0.0)
        dt_u = dt * u
        dy = tl.load(dy_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
            dy_ssm = dy * silu(z)  # y = (y_ssm + D u) * silu(z)
            y_ungated = D[:, None] * u if HAS_D else tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        else:
            dy_ssm = dy
        dh_dot_B = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)  # sum_n dh B
        d_dt_via_decay = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)  # sum_n d(dt A) A

        for n in tl.static_range(N):
            A_n = tl.load(A_ptr + channels * N + n)  # (BLOCK_D,)
            B_n = tl.load(B_rows + n * stride_B_n + t[None, :], mask=in_seq, other=0.0).to(tl.float32)  # (BLOCK_D, CHUNK)
            C_n = tl.load(C_rows + n * stride_C_n + t[None, :], mask=in_seq, other=0.0).to(tl.float32)

            # Rebuild state n over the chunk exactly as the forward did.
            h_n = tl.load(state_rows + chunk * N + n)  # (BLOCK_D,)
            decay = tl.exp2(dt * (A_n * LOG2E)[:, None])  # (BLOCK_D, CHUNK)
            drive = dt_u * B_n
            decay_prefix, local_states = tl.associative_scan((decay, drive), axis=1, combine_fn=linear_recurrence_combine)
            hs = local_states + decay_prefix * h_n[:, None]
            if HAS_Z:
                y_ungated += hs * C_n

            # dh_t = C_t dy_t + a_{t+1} dh_{t+1}, continuing from the chunk after this one.
            decay_next = tl.exp2(dt_next * (A_n * LOG2E)[:, None])
            # The carry enters as part of the last step's input, so only the scan's value half is needed after
            # the reverse scan (which Triton runs by flipping its operands across lanes: each output costs).
            dh_after = tl.load(carry_rows + carry_slot * N + n)  # (BLOCK_D,)
            from_output = C_n * dy_ssm + tl.where(is_last_step, decay_next * dh_after[:, None], 0.0)
            _, dh = tl.associative_scan((decay_next, from_output), axis=1, combine_fn=linear_recurrence_combine,
                                        reverse=True)  # (BLOCK_D, CHUNK)
            dh_first = tl.gather(dh, tl.zeros((BLOCK_D, 1), dtype=tl.int32), axis=1)  # (BLOCK_D, 1)
            tl.store(carry_rows[:, None] + next_carry_slot * N + n, dh_first)

            d_dtA = dh * (hs - drive)  # = dh_t a_t h_{t-1}
            tl.atomic_add(dA_partial_ptr + (batch * dim + channels) * N + n, tl.sum(d_dtA * dt, axis=1), sem="relaxed")
            d_dt_via_decay += d_dtA * A_n[:, None]
            dh_dot_B += dh * B_n
            dB_ptrs = dB_ptr + dBC_row + n * length + t
            tl.atomic_add(dB_ptrs, tl.sum(dh * dt_u, axis=0), mask=t < length, sem="relaxed")
            tl.atomic_add(dC_ptr + dBC_row + n * length + t, tl.sum(hs * dy_ssm, axis=0), mask=t < length, sem="relaxed")

        if HAS_Z:
            tl.store(dz_ptr + grad_rows + t[None, :], (dy * y_ungated * silu_grad(z)).to(dz_ptr.dtype.element_ty),
                     mask=in_seq)
        d_dt = d_dt_via_decay + dh_dot_B * u
        du = dh_dot_B * dt
        if HAS_D:
            du += D[:, None] * dy_ssm
            dD_acc += tl.sum(dy_ssm * u, axis=1)
        if DELTA_SOFTPLUS:
            d_dt *= sigmoid(dt_raw)
        d_dt = tl.where(in_seq, d_dt, 0.0)
        if HAS_DELTA_BIAS:
            d_delta_bias_acc += tl.sum(d_dt, axis=1)
        tl.store(du_ptr + grad_rows + t[None, :], du.to(du_ptr.dtype.element_ty), mask=in_seq)
        tl.store(d_delta_ptr + grad_rows + t[None, :], d_dt.to(d_delta_ptr.dtype.element_ty), mask=in_seq)
        tl.debug_barrier()  # the next (earlier) chunk reads the dh carry written above, from other threads

    if HAS_D:
        tl.store(dD_partial_ptr + batch * dim + channels, dD_acc)
    if HAS_DELTA_BIAS:
        tl.store(d_delta_bias_partial_ptr + batch * dim + channels, d_delta_bias_acc)
    if WANTS_D_INITIAL_STATE:
        # h_0 = a_0 h_init + b_0, so d h_init = a_0 dh_0 (a_0 = 1 when L = 0: the state passes through).
        dh_0 = tl.load(carry_rows[:, None] + (n_chunks % 2) * N + states[None, :])  # (BLOCK_D, N)
        A = tl.load(A_ptr + channels[:, None] * N + states[None, :])
        has_step = length > 0
        dt0 = tl.load(delta_rows, mask=has_step, other=0.0).to(tl.float32)  # (BLOCK_D, 1)
        if HAS_DELTA_BIAS:
            dt0 += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt0 = softplus(dt0)
        dt0 = tl.where(has_step, dt0, 0.0)
        tl.store(d_initial_state_ptr + state_offsets, tl.exp(dt0 * A) * dh_0)


def selective_scan_backward(
    dy: torch.Tensor,
    d_last_state: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    states: torch.Tensor,
    wants_d_initial_state: bool,
    tiles: ScanTiles | None = None,
) -> dict[str, torch.Tensor | None]:
    """Launch the backward scan; returns the gradients by input name, in fp32 for A, B, C, D, delta_bias and
    the initial state, and in the input's dtype for u, delta and z. ``states`` (batch, dim, n_chunks + 1, N)
    come from the forward, which must have used the same chunk length (``scan_config``)."""
    tiles = tiles or BACKWARD_TILES
    batch, dim, length = u.shape
    groups, n_states = B.shape[1], B.shape[2]
    channels_per_group = dim // groups
    block_d = channel_block(channels_per_group, tiles.block_d)
    n_chunks = triton.cdiv(length, tiles.chunk)
    assert states.shape[2] == state_slots(n_chunks, True), "forward and backward scans must use the same chunk length"
    f32 = dict(device=u.device, dtype=torch.float32)

    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    d_delta = torch.empty_like(delta, memory_format=torch.contiguous_format)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else None
    dB = torch.zeros((batch, groups, n_states, length), **f32)
    dC = torch.zeros((batch, groups, n_states, length), **f32)
    dA_partial = torch.zeros((batch, dim, n_states), **f32)
    dh_carry = torch.empty((batch, dim, 2, n_states), **f32)
    dD_partial = torch.empty((batch, dim), **f32) if D is not None else None
    d_delta_bias_partial = torch.empty((batch, dim), **f32) if delta_bias is not None else None
    d_initial_state = torch.empty((batch, dim, n_states), **f32) if wants_d_initial_state else None

    z_arg = z if z is not None else u
    _selective_scan_bwd_kernel[(batch, dim // block_d)](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        states, dy, d_last_state if d_last_state is not None else A,
        du, d_delta, dz if dz is not None else du, dB, dC, dA_partial,
        dD_partial if dD_partial is not None else dA_partial,
        d_delta_bias_partial if d_delta_bias_partial is not None else dA_partial,
        d_initial_state if d_initial_state is not None else dA_partial, dh_carry,
        dim, length, n_chunks, states.shape[2], channels_per_group, groups,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z_arg.stride(0), z_arg.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2), dy.stride(0), dy.stride(1),
        N=n_states, BLOCK_D=block_d, CHUNK=tiles.chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_D_LAST_STATE=d_last_state is not None,
        WANTS_D_INITIAL_STATE=wants_d_initial_state,
        num_warps=tiles.num_warps,
    )
    return {
        "u": du,
        "delta": d_delta,
        "A": dA_partial.sum(0),
        "B": dB,
        "C": dC,
        "D": dD_partial.sum(0) if dD_partial is not None else None,
        "z": dz,
        "delta_bias": d_delta_bias_partial.sum(0) if d_delta_bias_partial is not None else None,
        "initial_state": d_initial_state,
    }
