"""The four Mamba operations through our Triton kernels (reference signatures, compiled on first use).

Importing this module raises ImportError when triton is missing; ``ops.resolve_ops`` relies on it. The scan
and the convolution are autograd Functions (forward and backward kernels); the two decoding steps update
their cache in place and are inference-only, like mamba-ssm's.
"""

from __future__ import annotations

import weakref

import torch
import triton  # noqa: F401  (fail at import, not at first call, when triton is missing)

from . import reference
from .triton_kernels.causal_conv1d_bwd import causal_conv1d_backward
from .triton_kernels.causal_conv1d_fwd import causal_conv1d_forward
from .triton_kernels.causal_conv1d_update import causal_conv1d_update_step
from .triton_kernels.conv_document_starts import ConvDocumentStarts, conv_document_starts
from .triton_kernels.conv_runs import MAX_CONV_WIDTH
from .triton_kernels.selective_scan_bwd import selective_scan_backward
from .triton_kernels.selective_scan_fwd import selective_scan_forward
from .triton_kernels.selective_state_update import selective_state_update_step

NAME = "triton"
SUPPORTS_DOCUMENT_STARTS = True


def _unit_time_stride(x: torch.Tensor) -> torch.Tensor:
    """The kernels read time (the last axis) with unit stride; copy only tensors that lack it."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_state_size(n_states: int) -> None:
    if n_states & (n_states - 1):
        raise ValueError(f"triton backend: state size N={n_states} must be a power of two (Mamba uses 16)")


def _starts_for_scan(document_starts: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, L) document starts as the scan kernels read them: contiguous uint8, 1 at a document's first step.
    (The conv reads them as ``conv_document_starts``: ``_conv_starts``.)"""
    if document_starts is None:
        return None
    starts = document_starts.contiguous()
    if starts.dtype == torch.bool:
        return starts.view(torch.uint8)  # same bytes: no kernel launch per layer
    return starts.to(torch.uint8)


def _silu_or_none(activation: str | None, op: str) -> bool:
    if activation in ("silu", "swish"):
        return True
    if activation is None:
        return False
    raise ValueError(f"{op}: unknown activation {activation!r}; use 'silu' or None")


class _SelectiveScan(torch.autograd.Function):
    """Returns ``(y, last_state)``; both are differentiable (the final state feeds the next chunk of a sequence)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, initial_state, document_starts):
        ctx.set_materialize_grads(False)
        needs_grad = any(ctx.needs_input_grad)
        y, last_state, states = selective_scan_forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, store_checkpoints=needs_grad,
            document_starts=document_starts,
        )
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, document_starts)
            ctx.delta_softplus = delta_softplus
            ctx.has_initial_state = initial_state is not None
        return y, last_state

    @staticmethod
    def backward(ctx, dy, d_last_state):
        u, delta, A, B, C, D, z, delta_bias, states, document_starts = ctx.saved_tensors
        dy = _unit_time_stride(dy) if dy is not None else torch.zeros_like(u)
        grads = selective_scan_backward(
            dy, None if d_last_state is None else d_last_state.float().contiguous(),
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states,
            wants_d_initial_state=ctx.has_initial_state and ctx.needs_input_grad[9],
            document_starts=document_starts,
        )
        return (
            grads["u"], grads["delta"], grads["A"], grads["B"].to(B.dtype), grads["C"].to(C.dtype),
            grads["D"], grads["z"], grads["delta_bias"], None, grads["initial_state"], None,
        )


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
    """See ``reference.selective_scan``. A, D, delta_bias and the state run in fp32; the casts below are
    autograd ops, so their gradients reach parameters of any dtype."""
    _check_state_size(A.shape[1])
    y, last_state = _SelectiveScan.apply(
        _unit_time_stride(u), _unit_time_stride(delta), A.float().contiguous(),
        _unit_time_stride(B), _unit_time_stride(C),
        None if D is None else D.float().contiguous(),
        None if z is None else _unit_time_stride(z),
        None if delta_bias is None else delta_bias.float().contiguous(),
        delta_softplus,
        None if initial_state is None else initial_state.float().contiguous(),
        _starts_for_scan(document_starts),
    )
    return (y, last_state) if return_last_state else y


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
    """See ``reference.selective_state_update``: updates ``state`` in place, returns y (batch, dim)."""
    _check_state_size(A.shape[1])
    return selective_state_update_step(
        state, x, dt, A.float().contiguous(), B, C, D, z, dt_bias, dt_softplus
    )


_last_conv_starts: tuple[weakref.ref, int, ConvDocumentStarts] | None = None


def _conv_starts(document_starts: torch.Tensor) -> ConvDocumentStarts:
    """``conv_document_starts`` of these starts, computed once for all the Mamba layers of a forward: the model
    hands every layer the same tensor, so the last result is kept and reused while the argument is that very
    tensor, unchanged in place (its version counter; inference tensors keep none, and no layer writes to them)."""
    global _last_conv_starts
    version = -1 if document_starts.is_inference() else document_starts._version
    if _last_conv_starts is not None:
        tensor, kept_version, document = _last_conv_starts
        if tensor() is document_starts and kept_version == version:
            return document
    document = conv_document_starts(document_starts)
    _last_conv_starts = (weakref.ref(document_starts), version, document)
    return document


class _CausalConv1d(torch.autograd.Function):
    """Returns the conv output; the new conv state is sliced from the inputs outside, by autograd-aware ops.
    A packed row's (batch, L) bool ``document_starts`` reach the kernels as ``conv_document_starts`` gives them
    (``_conv_starts``: once per forward of the model): the forward kernel corrects the outputs they cut itself,
    the backward kernel follows its fix-up launch (``conv_document_fixup``), on Hopper as its dependent."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu_activation: bool, history, document_starts):
        document = None if document_starts is None else _conv_starts(document_starts)
        out = causal_conv1d_forward(x, weight, bias, silu_activation, history, document)
        ctx.save_for_backward(x, weight, bias, history, document_starts, *(document or (None,) * 4))
        ctx.silu_activation = silu_activation
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, history, document_starts, *document = ctx.saved_tensors
        dout = _unit_time_stride(dout)
        dx, dweight, dbias = causal_conv1d_backward(dout, x, weight, bias, ctx.silu_activation, history,
                                                    None if document_starts is None else ConvDocumentStarts(*document))
        d_history = None
        if history is not None and ctx.needs_input_grad[4]:
            d_history = _history_grad(dout, x, weight, bias, ctx.silu_activation, history, document_starts)
        return (dx, dweight.to(weight.dtype), None if dbias is None else dbias.to(bias.dtype), None, d_history,
                None)


def _history_grad(dout, x, weight, bias, silu_activation: bool, history, document_starts):
    """Gradient of the conv state that preceded x. It reaches only the first W-1 outputs, so the reference
    on that short slice gives it at negligible cost."""
    lead = weight.shape[1] - 1
    with torch.enable_grad():
        history_fp32 = history.detach().float().requires_grad_(True)
        out, _ = reference.causal_conv1d(
            x[..., :lead].detach().float(), weight.detach().float(), None if bias is None else bias.detach().float(),
            "silu" if silu_activation else None, history_fp32,
            None if document_starts is None else document_starts[:, :lead].bool(),
        )
        (d_history,) = torch.autograd.grad(out, history_fp32, dout[..., :lead].float())
    return d_history.to(history.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    initial_state: torch.Tensor | None = None,
    document_starts: torch.Tensor | None = None,
    return_final_states: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See ``reference.causal_conv1d``: returns the output and the new conv state (the last W inputs)."""
    silu_activation = _silu_or_none(activation, "causal_conv1d")
    width = weight.shape[1]
    if not 2 <= width <= MAX_CONV_WIDTH:
        raise ValueError(f"triton backend: conv width {width} must be 2 to {MAX_CONV_WIDTH} (Mamba uses 4), as in "
                         "causal-conv1d; the reference backend takes any width")
    history = None if initial_state is None else _unit_time_stride(initial_state.to(x.dtype))
    out = _CausalConv1d.apply(_unit_time_stride(x), weight.contiguous(), bias, silu_activation, history,
                              document_starts)
    if not return_final_states:
        return out, None
    if x.shape[-1] >= width:
        new_state = x[..., -width:].clone()
    else:
        if history is None:
            history = x.new_zeros(x.shape[0], x.shape[1], width)
        new_state = torch.cat([history, x], dim=-1)[..., -width:]
    if document_starts is not None:
        new_state = new_state * reference.last_document_inputs(document_starts, width)[:, None].to(x.dtype)
    return out, new_state


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """See ``reference.causal_conv1d_update``: shifts x into ``conv_state`` in place, returns the output."""
    silu_activation = _silu_or_none(activation, "causal_conv1d_update")
    return causal_conv1d_update_step(x, conv_state, weight.contiguous(), bias, silu_activation)
