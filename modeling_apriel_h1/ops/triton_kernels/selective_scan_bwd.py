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

from .device_functions import linear_recurrence_combine, sigmoid, silu, silu_grad, softplus
from .scan_config import BACKWARD_TILES, ScanTiles, channel_block


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, checkpoints_ptr, dy_ptr, d_last_state_ptr,
    du_ptr, d_delta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_partial_ptr, dD_partial_ptr, d_delta_bias_partial_ptr,
    d_initial_state_ptr,
    dim, length, n_chunks, channels_per_group, groups,
    stride_u_b, stride_u_d, stride_delta_b, stride_delta_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n, stride_dy_b, stride_dy_d,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_D_LAST_STATE: tl.constexpr, WANTS_D_INITIAL_STATE: tl.constexpr,
):
    """One program = one batch row x BLOCK_D channels (one B/C group), walking the chunks backwards.

    Layouts as in the forward; du, d_delta, dz (batch, dim, L) contiguous; dB, dC (batch, G, N, L) fp32,
    zeroed, accumulated atomically (the programs of one group share them); dA (batch, dim, N), dD and
    d_delta_bias (batch, dim) fp32 per-batch partials that the launcher sums.
    """
    batch = tl.program_id(0).to(tl.int64)
    first_channel = tl.program_id(1) * BLOCK_D
    channels = first_channel + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    states = tl.arange(0, N)  # (N,)
    steps = tl.arange(0, CHUNK)  # (CHUNK,)
    group = first_channel // channels_per_group

    A = tl.load(A_ptr + channels[:, None] * N + states[None, :])  # (BLOCK_D, N)
    state_offsets = batch * dim * N + channels[:, None] * N + states[None, :]  # (BLOCK_D, N)
    if HAS_D_LAST_STATE:
        dh_next = tl.load(d_last_state_ptr + state_offsets)  # dh at the first step of the chunk after
    else:
        dh_next = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + channels).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + channels).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    d_delta_bias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    u_rows = u_ptr + batch * stride_u_b + channels[:, None] * stride_u_d  # (BLOCK_D, 1)
    delta_rows = delta_ptr + batch * stride_delta_b + channels[:, None] * stride_delta_d
    dy_rows = dy_ptr + batch * stride_dy_b + channels[:, None] * stride_dy_d
    grad_rows = batch * dim * length + channels[:, None] * length  # offsets into du, d_delta, dz
    if HAS_Z:
        z_rows = z_ptr + batch * stride_z_b + channels[:, None] * stride_z_d
    B_rows = B_ptr + batch * stride_B_b + group * stride_B_g + states[:, None] * stride_B_n  # (N, 1)
    C_rows = C_ptr + batch * stride_C_b + group * stride_C_g + states[:, None] * stride_C_n
    dBC_rows = ((batch * groups + group) * N + states[:, None]) * length  # offsets into dB, dC
    checkpoint_offsets = (batch * dim + channels[:, None]) * n_chunks * N + states[None, :]

    for reverse_chunk in range(n_chunks):
        chunk = n_chunks - 1 - reverse_chunk
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
        B = tl.load(B_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)  # (N, CHUNK)
        C = tl.load(C_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
        dy = tl.load(dy_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)  # (BLOCK_D, CHUNK)

        # Rebuild the chunk's states exactly as the forward did.
        h_before = tl.load(checkpoints_ptr + checkpoint_offsets + chunk * N)  # (BLOCK_D, N)
        decay = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, N, CHUNK)
        drive = (dt * u)[:, None, :] * B[None, :, :]
        decay_prefix, local_states = tl.associative_scan((decay, drive), axis=2, combine_fn=linear_recurrence_combine)
        hs = local_states + decay_prefix * h_before[:, :, None]

        # Undo the gate: y = (y_ssm + D u) * silu(z).
        if HAS_Z:
            z = tl.load(z_rows + t[None, :], mask=in_seq, other=0.0).to(tl.float32)
            y_ungated = tl.sum(hs * C[None, :, :], axis=1)  # (BLOCK_D, CHUNK)
            if HAS_D:
                y_ungated += D[:, None] * u
            tl.store(dz_ptr + grad_rows + t[None, :], (dy * y_ungated * silu_grad(z)).to(dz_ptr.dtype.element_ty),
                     mask=in_seq)
            dy_ssm = dy * silu(z)
        else:
            dy_ssm = dy

        # Reverse scan for dh, continuing from the chunk after this one.
        decay_next = tl.exp(dt_next[:, None, :] * A[:, :, None])  # a_{t+1}, (BLOCK_D, N, CHUNK)
        from_output = C[None, :, :] * dy_ssm[:, None, :]
        decay_suffix, local_dh = tl.associative_scan((decay_next, from_output), axis=2,
                                                     combine_fn=linear_recurrence_combine, reverse=True)
        dh = local_dh + decay_suffix * dh_next[:, :, None]  # (BLOCK_D, N, CHUNK)
        dh_next = tl.sum(tl.where(steps[None, None, :] == 0, dh, 0.0), axis=2)

        d_dtA = dh * (hs - drive)  # (BLOCK_D, N, CHUNK)
        dA_acc += tl.sum(d_dtA * dt[:, None, :], axis=2)
        dh_dot_B = tl.sum(dh * B[None, :, :], axis=1)  # (BLOCK_D, CHUNK)
        d_dt = tl.sum(d_dtA * A[:, :, None], axis=1) + dh_dot_B * u
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

        dB = tl.sum(dh * (dt * u)[:, None, :], axis=0)  # (N, CHUNK)
        dC = tl.sum(hs * dy_ssm[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + dBC_rows + t[None, :], dB, mask=in_seq, sem="relaxed")
        tl.atomic_add(dC_ptr + dBC_rows + t[None, :], dC, mask=in_seq, sem="relaxed")

    tl.store(dA_partial_ptr + state_offsets, dA_acc)
    if HAS_D:
        tl.store(dD_partial_ptr + batch * dim + channels, dD_acc)
    if HAS_DELTA_BIAS:
        tl.store(d_delta_bias_partial_ptr + batch * dim + channels, d_delta_bias_acc)
    if WANTS_D_INITIAL_STATE:
        # h_0 = a_0 h_init + b_0, so d h_init = a_0 dh_0 (a_0 = 1 when L = 0: the state passes through).
        has_step = length > 0
        dt0 = tl.load(delta_rows, mask=has_step, other=0.0).to(tl.float32)  # (BLOCK_D, 1)
        if HAS_DELTA_BIAS:
            dt0 += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt0 = softplus(dt0)
        dt0 = tl.where(has_step, dt0, 0.0)
        tl.store(d_initial_state_ptr + state_offsets, tl.exp(dt0 * A) * dh_next)


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
    checkpoints: torch.Tensor,
    wants_d_initial_state: bool,
    tiles: ScanTiles | None = None,
) -> dict[str, torch.Tensor | None]:
    """Launch the backward scan; returns the gradients by input name, in fp32 for A, B, C, D, delta_bias and
    the initial state, and in the input's dtype for u, delta and z. ``checkpoints`` come from the forward,
    which must have used the same chunk length (``scan_config``)."""
    tiles = tiles or BACKWARD_TILES
    batch, dim, length = u.shape
    groups, n_states = B.shape[1], B.shape[2]
    channels_per_group = dim // groups
    block_d = channel_block(channels_per_group, tiles.block_d)
    n_chunks = checkpoints.shape[2]
    assert n_chunks == triton.cdiv(length, tiles.chunk), "forward and backward scans must use the same chunk length"
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
    _selective_scan_bwd_kernel[(batch, dim // block_d)](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        checkpoints, dy, d_last_state if d_last_state is not None else A,
        du, d_delta, dz if dz is not None else du, dB, dC, dA_partial,
        dD_partial if dD_partial is not None else dA_partial,
        d_delta_bias_partial if d_delta_bias_partial is not None else dA_partial,
        d_initial_state if d_initial_state is not None else dA_partial,
        dim, length, n_chunks, channels_per_group, groups,
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
