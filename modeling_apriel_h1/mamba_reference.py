"""Pure-PyTorch reference of the four Mamba-1 operations the Apriel-H1 mixer needs.

These functions are the specification every fast path (mamba-ssm, causal-conv1d, our Triton kernels) is
tested against. They follow mamba-ssm's calling conventions so that the dispatch in ``ops/__init__.py``
can swap implementations without reshaping, and they compute the recurrence in fp32 whatever the input
dtype, as the CUDA kernels do.

Shapes (``dim`` = mixer inner width, ``N`` = state size, ``G`` = number of B/C groups, ``dim % G == 0``;
channel ``d`` reads group ``d // (dim // G)``):

- ``u``, ``delta``, ``z``: ``(batch, dim, L)``
- ``A``: ``(dim, N)`` (negative real), ``D``, ``delta_bias``: ``(dim,)``
- ``B``, ``C``: ``(batch, G, N, L)``; single-step versions drop ``L``
- SSM state: ``(batch, dim, N)`` fp32; conv state: ``(batch, dim, width)`` (the last ``width`` inputs)
- ``document_starts``: ``(batch, L)`` bool, True at the first token of each document of a packed row. There the
  scan's state restarts from zero (the decay is forced to zero, which also drops an initial state) and the conv
  reads nothing before it (the conv state counts as preceding position 0), so every document of the row is
  computed as if it ran alone. mamba-ssm's Mamba-1 scan has no such input; ``ops.backend_for_packed_rows``
  sends packed rows to a backend that has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Repeat each of the G groups of ``x`` (batch, G, ...) so that there is one per channel."""
    groups = x.shape[1]
    return x.repeat_interleave(dim // groups, dim=1)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    document_starts: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = C_t h_t + D u_t``.

    The output is gated by ``silu(z)`` when ``z`` is given. Returns ``y`` in ``u``'s dtype and, when asked,
    the final state ``(batch, dim, N)`` in fp32 (what a cache keeps to continue the sequence). Where
    ``document_starts`` is True the decay is zero: ``h_t = dt_t B_t u_t``, a fresh state.
    """
    dtype_in = u.dtype
    batch, dim, length = u.shape
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.float()
    B = _expand_groups(B.float(), dim)  # (batch, dim, N, L)
    C = _expand_groups(C.float(), dim)
    # time-major so that each step reads a contiguous slice and backward stacks instead of scattering
    decay = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])  # (batch, dim, N, L)
    if document_starts is not None:
        decay = decay.masked_fill(document_starts[:, None, None, :], 0.0)
    decay = decay.permute(3, 0, 1, 2)  # (L, batch, dim, N)
    drive = (delta.unsqueeze(2) * B * u.unsqueeze(2)).permute(3, 0, 1, 2)  # (L, batch, dim, N)
    readout = C.permute(3, 0, 1, 2)  # (L, batch, dim, N)

    state = (
        initial_state.float().clone()
        if initial_state is not None
        else u.new_zeros(batch, dim, A.shape[1], dtype=torch.float32)
    )
    outputs = []
    for decay_t, drive_t, readout_t in zip(decay.unbind(0), drive.unbind(0), readout.unbind(0)):
        state = decay_t * state + drive_t
        outputs.append((state * readout_t).sum(-1))
    y = torch.stack(outputs, dim=-1) if outputs else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, state) if return_last_state else y


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decoding step of the scan. ``state`` (batch, dim, N) is updated in place; returns y (batch, dim)."""
    dim = x.shape[1]
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    B = _expand_groups(B.float(), dim)  # (batch, dim, N)
    C = _expand_groups(C.float(), dim)
    new_state = torch.exp(dt.unsqueeze(-1) * A.float()) * state.float() + dt.unsqueeze(-1) * B * x.float().unsqueeze(-1)
    state.copy_(new_state)
    y = (new_state * C).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    initial_state: torch.Tensor | None = None,
    document_starts: torch.Tensor | None = None,
    return_final_states: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal convolution over ``x`` (batch, dim, L) with ``weight`` (dim, width).

    ``initial_state`` (batch, dim, width) holds the inputs that precede ``x`` (zeros for a new sequence).
    Returns the output (batch, dim, L) and the new conv state: the last ``width`` inputs, or None with
    ``return_final_states=False`` (as causal-conv1d's flag: a forward without a cache, such as training, skips
    building it). With ``document_starts``, output t reads only the inputs of its own document (none before the
    last start at or before t), and the new state keeps only the last document's inputs.
    """
    dim, width = weight.shape
    if initial_state is None:
        history = x.new_zeros(x.shape[0], dim, width)
    else:
        history = initial_state.to(x.dtype)
    if activation not in ("silu", "swish", None):
        raise ValueError(f"causal_conv1d: unknown activation {activation!r}; use 'silu' or None")
    padded = torch.cat([history[..., 1:], x], dim=-1)  # width - 1 inputs of context, then x
    if document_starts is None:
        out = F.conv1d(padded, weight.unsqueeze(1), bias, groups=dim)
        new_state = torch.cat([history, x], dim=-1)[..., -width:]
    else:
        # windows[..., t, k] is the input at t - (width - 1) + k, kept when it is in step t's document
        windows = padded.unfold(-1, width, 1)  # (batch, dim, L, width)
        in_document = _no_start_after(F.pad(document_starts, (width - 1, 0)).unfold(-1, width, 1))
        out = (windows * in_document[:, None].to(x.dtype) * weight[:, None, :]).sum(-1)
        if bias is not None:
            out = out + bias[:, None]
        new_state = torch.cat([history, x], dim=-1)[..., -width:]
        new_state = new_state * last_document_inputs(document_starts, width)[:, None].to(x.dtype)
    if activation is not None:
        out = F.silu(out)
    return out, new_state if return_final_states else None


def last_document_inputs(document_starts: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) bool: which of the last ``width`` inputs (what a conv state keeps) belong to the row's last
    document, the only ones a call continuing the row may read."""
    return _no_start_after(F.pad(document_starts, (width, 0))[:, -width:])


def _no_start_after(starts: torch.Tensor) -> torch.Tensor:
    """(..., width) bool document starts over a window of inputs -> (..., width) bool: whether input k of the
    window is in the document of the window's last step, i.e. no document starts at a later input of it."""
    counts = starts.long()
    return (counts.flip(-1).cumsum(-1).flip(-1) - counts) == 0


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """One decoding step of the conv: shifts ``x`` (batch, dim) into ``conv_state`` in place, returns the output."""
    conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    out = (conv_state.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        out = out + bias
    if activation in ("silu", "swish"):
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"causal_conv1d_update: unknown activation {activation!r}; use 'silu' or None")
    return out.to(x.dtype)
