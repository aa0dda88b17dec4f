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
from .scan_config import SCAN_TILES, ScanTiles

ATOMIC_RUN: tl.constexpr = tl.constexpr(4)  # fp32 values per vector atomic add (128 bits), the widest there is


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, starts_ptr, states_ptr, dy_ptr,
    d_last_state_ptr,
    du_ptr, d_delta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr, d_delta_bias_partial_ptr,
    d_initial_state_ptr,
    dim, length, n_chunks, channels_per_group, groups,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n, stride_dy_b, stride_dy_d,
    N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_D_LAST_STATE: tl.constexpr, WANTS_D_INITIAL_STATE: tl.constexpr, EVEN_LENGTH: tl.constexpr,
    HAS_DOCUMENT_STARTS: tl.constexpr,
):
    """One program = one batch row x one channel, walking the chunks backwards with (N, CHUNK) tiles.

    ``states`` is the forward's (batch, dim, n_chunks + 1, N) buffer (slot c = state before chunk c). du, d_delta,
    dz (batch, dim, L) contiguous; dB, dC (batch, G, N, L) fp32, zeroed, accumulated atomically by the group's
    channels; dA (batch, dim, N), dD and d_delta_bias (batch, dim) fp32 per-batch partials the launcher sums.
    Everything carried between chunks (dh, and the dA, dD, d_delta_bias sums) stays in registers: passing
    dh through memory puts a store, a barrier and a load on every chunk's critical path, which made this
    kernel 2.4x slower. With HAS_DOCUMENT_STARTS (``starts`` (batch, L) uint8, as in the forward) the decay is 0
    at a document's first step, both where the chunk's states are rebuilt and where dh flows back across it.
    """
    batch = tl.program_id(0).to(tl.int64)
    channel = tl.program_id(1)
    steps = tl.arange(0, CHUNK)  # (CHUNK,)
    states = tl.arange(0, N)  # (N,)
    group = channel // channels_per_group
    row = batch * dim + channel  # this program's (batch, channel) row of the (batch, dim, ...) tensors
    is_first_step = (steps == 0)[None, :]  # (1, CHUNK)
    is_last_step = (steps == CHUNK - 1)[None, :]

    A = tl.load(A_ptr + channel * N + states)  # (N,)
    A_log2 = A * LOG2E  # exp(dt A) = exp2(dt A_log2)
    if HAS_D_LAST_STATE:
        dh_carry = tl.load(d_last_state_ptr + row * N + states)  # (N,) dh at the first step after the chunk
    else:
        dh_carry = tl.zeros((N,), dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + channel).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channel).to(tl.float32)
    dA_acc = tl.zeros((N,), dtype=tl.float32)
    dD_acc = tl.zeros((CHUNK,), dtype=tl.float32)
    d_delta_bias_acc = tl.zeros((CHUNK,), dtype=tl.float32)

    state_row = states_ptr + row * (n_chunks + 1) * N
    u_row = u_ptr + batch * stride_u_b + channel * stride_u_d
    delta_row = delta_ptr + batch * stride_delta_b + channel * stride_delta_d
    dy_row = dy_ptr + batch * stride_dy_b + channel * stride_dy_d
    if HAS_Z:
        z_row = z_ptr + batch * stride_z_b + channel * stride_z_d
    B_tile = B_ptr + batch * stride_B_b + group * stride_B_g + states[:, None] * stride_B_n  # (N, 1), + t
    C_tile = C_ptr + batch * stride_C_b + group * stride_C_g + states[:, None] * stride_C_n
    dBC_tile = ((batch * groups + group) * N + states[:, None]) * length  # (N, 1) offsets into dB, dC

    for reverse_chunk in range(n_chunks):
        chunk = n_chunks - 1 - reverse_chunk
        t = chunk * CHUNK + steps  # (CHUNK,)
        if EVEN_LENGTH:  # every chunk is full: constant masks drop the predicates and the registers they hold
            in_seq = tl.full((CHUNK,), 1, tl.int1)
        else:
            in_seq = t < length
        next_in_seq = t + 1 < length
        u = tl.load(u_row + t, mask=in_seq, other=0.0).to(tl.float32)  # (CHUNK,)
        dt_raw = tl.load(delta_row + t, mask=in_seq, other=0.0).to(tl.float32)
        dt_next = tl.load(delta_row + t + 1, mask=next_in_seq, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt_raw += delta_bias
            dt_next += delta_bias
        if DELTA_SOFTPLUS:
            dt = softplus(dt_raw)
            dt_next = softplus(dt_next)
        else:
            dt = dt_raw
        # As in the forward, dt = 0 past the end: those steps pass the state (and dh) through unchanged.
        dt = tl.where(in_seq, dt, 0.0)
        dt_next = tl.where(next_in_seq, dt_next, 0.0)
        dt_u = dt * u
        dy = tl.load(dy_row + t, mask=in_seq, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_row + t, mask=in_seq, other=0.0).to(tl.float32)
            dy_ssm = dy * silu(z)  # y = (y_ssm + D u) * silu(z)
        else:
            dy_ssm = dy
        # B and C are read in runs of ATOMIC_RUN steps per thread (bf16 would allow 8) so that every tile of the
        # chunk shares the layout of the dB/dC atomics. With two layouts the compiler rebuilt the forward scan a
        # second time in the atomics' layout and spilled registers: 8.9 -> 5.0 ms (H200, b=1, L=16k, together
        # with EVEN_LENGTH, the reordering below and dA summed per chunk).
        t_in_runs = tl.max_contiguous(t, ATOMIC_RUN)
        B = tl.load(B_tile + t_in_runs[None, :], mask=in_seq[None, :], other=0.0).to(tl.float32)  # (N, CHUNK)
        C = tl.load(C_tile + t_in_runs[None, :], mask=in_seq[None, :], other=0.0).to(tl.float32)

        # Rebuild the chunk's states exactly as the forward did. These four lines repeat the forward's on purpose:
        # moved into a shared @triton.jit function they made the forward kernel 1.49 -> 1.89 ms (H100, b=1, L=16k).
        h_start = tl.load(state_row + chunk * N + states)  # (N,)
        if HAS_DOCUMENT_STARTS:
            starts = tl.load(starts_ptr + batch * length + t, mask=in_seq, other=0)
            reset = tl.where(starts != 0, float("-inf"), 0.0)
            decay = tl.exp2(dt[None, :] * A_log2[:, None] + reset[None, :])  # (N, CHUNK)
        else:
            decay = tl.exp2(dt[None, :] * A_log2[:, None])
        drive = dt_u[None, :] * B
        decay_prefix, local_states = tl.associative_scan((decay, drive), axis=1, combine_fn=linear_recurrence_combine)
        hs = local_states + decay_prefix * h_start[:, None]

        # What needs only the states comes before the reverse scan, so that fewer tiles live across it.
        tl.atomic_add(dC_ptr + dBC_tile + t[None, :], hs * dy_ssm[None, :], mask=in_seq[None, :], sem="relaxed")
        if HAS_Z:
            y_ungated = tl.sum(hs * C, axis=0)
            if HAS_D:
                y_ungated += D * u
            tl.store(dz_ptr + row * length + t, (dy * y_ungated * silu_grad(z)).to(dz_ptr.dtype.element_ty),
                     mask=in_seq)
        decayed_previous = hs - drive  # a_t h_{t-1}

        # dh_t = C_t dy_t + a_{t+1} dh_{t+1}; the next chunk's dh enters as part of the last step's input.
        if HAS_DOCUMENT_STARTS:
            starts_next = tl.load(starts_ptr + batch * length + t + 1, mask=next_in_seq, other=0)
            reset_next = tl.where(starts_next != 0, float("-inf"), 0.0)
            decay_next = tl.exp2(dt_next[None, :] * A_log2[:, None] + reset_next[None, :])
        else:
            decay_next = tl.exp2(dt_next[None, :] * A_log2[:, None])
        from_output = C * dy_ssm[None, :] + tl.where(is_last_step, decay_next * dh_carry[:, None], 0.0)
        _, dh = tl.associative_scan((decay_next, from_output), axis=1, combine_fn=linear_recurrence_combine,
                                    reverse=True)  # (N, CHUNK)
        dh_carry = tl.sum(tl.where(is_first_step, dh, 0.0), axis=1)

        tl.atomic_add(dB_ptr + dBC_tile + t[None, :], dh * dt_u[None, :], mask=in_seq[None, :], sem="relaxed")
        d_dtA = dh * decayed_previous
        dA_acc += tl.sum(d_dtA * dt[None, :], axis=1)
        dh_dot_B = tl.sum(dh * B, axis=0)  # (CHUNK,)
        d_dt = tl.sum(d_dtA * A[:, None], axis=0) + dh_dot_B * u
        du = dh_dot_B * dt
        if HAS_D:
            du += D * dy_ssm
            dD_acc += dy_ssm * u
        if DELTA_SOFTPLUS:
            d_dt *= sigmoid(dt_raw)
        d_dt = tl.where(in_seq, d_dt, 0.0)
        if HAS_DELTA_BIAS:
            d_delta_bias_acc += d_dt
        tl.store(du_ptr + row * length + t, du.to(du_ptr.dtype.element_ty), mask=in_seq)
        tl.store(d_delta_ptr + row * length + t, d_dt.to(d_delta_ptr.dtype.element_ty), mask=in_seq)

    tl.store(dA_partial_ptr + row * N + states, dA_acc)
    if HAS_D:
        tl.store(dD_partial_ptr + row, tl.sum(dD_acc, axis=0))
    if HAS_DELTA_BIAS:
        tl.store(d_delta_bias_partial_ptr + row, tl.sum(d_delta_bias_acc, axis=0))
    if WANTS_D_INITIAL_STATE:
        # h_0 = a_0 h_init + b_0, so d h_init = a_0 dh_0 (a_0 = 1 when L = 0: the state passes through).
        has_step = length > 0
        dt0 = tl.load(delta_row, mask=has_step, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt0 += delta_bias
        if DELTA_SOFTPLUS:
            dt0 = softplus(dt0)
        dt0 = tl.where(has_step, dt0, 0.0)
        decay0 = tl.exp2(dt0 * A_log2)
        if HAS_DOCUMENT_STARTS:  # a document starting at step 0 does not read the initial state
            decay0 = tl.where(tl.load(starts_ptr + batch * length, mask=has_step, other=0) != 0, 0.0, decay0)
        tl.store(d_initial_state_ptr + row * N + states, decay0 * dh_carry)


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
    document_starts: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """Launch the backward scan; returns the gradients by input name, in fp32 for A, B, C, D, delta_bias and
    the initial state, and in the input's dtype for u, delta and z. ``states`` (batch, dim, n_chunks + 1, N)
    come from the forward, which must have used the same chunk length (``scan_config``)."""
    tiles = tiles or SCAN_TILES
    batch, dim, length = u.shape
    groups, n_states = B.shape[1], B.shape[2]
    channels_per_group = dim // groups
    n_chunks = triton.cdiv(length, tiles.chunk)
    assert states.shape[2] == n_chunks + 1, "forward and backward scans must use the same chunk length"
    f32 = dict(device=u.device, dtype=torch.float32)

    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    d_delta = torch.empty_like(delta, memory_format=torch.contiguous_format)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else None
    dB = torch.zeros((batch, groups, n_states, length), **f32)
    dC = torch.zeros((batch, groups, n_states, length), **f32)
    dA_partial = torch.empty((batch, dim, n_states), **f32)
    dD_partial = torch.empty((batch, dim), **f32) if D is not None else None
    d_delta_bias_partial = torch.empty((batch, dim), **f32) if delta_bias is not None else None
    d_initial_state = torch.empty((batch, dim, n_states), **f32) if wants_d_initial_state else None

    z_arg = z if z is not None else u
    _selective_scan_bwd_kernel[(batch, dim)](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        document_starts if document_starts is not None else A, states, dy, d_last_state if d_last_state is not None else A,
        du, d_delta, dz if dz is not None else du, dB, dC, dA_partial,
        dD_partial if dD_partial is not None else dA_partial,
        d_delta_bias_partial if d_delta_bias_partial is not None else dA_partial,
        d_initial_state if d_initial_state is not None else dA_partial,
        dim, length, n_chunks, channels_per_group, groups,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), z_arg.stride(0), z_arg.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2), dy.stride(0), dy.stride(1),
        N=n_states, CHUNK=tiles.chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus, HAS_D_LAST_STATE=d_last_state is not None,
        WANTS_D_INITIAL_STATE=wants_d_initial_state, EVEN_LENGTH=length % tiles.chunk == 0,
        HAS_DOCUMENT_STARTS=document_starts is not None,
        num_warps=tiles.backward_num_warps,
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
