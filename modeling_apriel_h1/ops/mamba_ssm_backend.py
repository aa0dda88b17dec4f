"""The four Mamba operations through mamba-ssm's kernels (reference signatures).

The scan and the decoding step come from mamba-ssm. The convolution comes from causal-conv1d when it is
installed, else from our Triton kernels (causal-conv1d takes longer to build than mamba-ssm itself, and many
installs have only the latter). Importing this module raises ImportError when mamba-ssm is missing;
``ops.resolve_ops`` relies on it.

A sequence that continues from a state (a prompt prefilled in chunks, a prefill resumed from the prefix cache)
runs on our Triton kernels, which take an initial conv window and SSM state: mamba-ssm's Mamba-1 scan has no
initial state, and the PyTorch reference would loop over time steps in Python.
"""

from __future__ import annotations

import torch
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _scan_fn
from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _state_update

from . import reference, triton_backend

NAME = "mamba_ssm"
SUPPORTS_DOCUMENT_STARTS = False  # Mamba-1's selective_scan_fn cannot reset: ops.backend_for_packed_rows

try:
    from causal_conv1d import causal_conv1d_fn as _conv_fn
    from causal_conv1d import causal_conv1d_update as _conv_update

    CONV_SOURCE = "causal_conv1d"
except ImportError:
    _conv_fn = _conv_update = None
    CONV_SOURCE = "triton"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_last_state=False):
    """mamba-ssm's fused scan; its kernel has no initial state, so a continued sequence uses our Triton scan (the
    reference where the state size is not a power of two, which our kernels need)."""
    if initial_state is not None:
        n_states = A.shape[1]
        continued = triton_backend if n_states & (n_states - 1) == 0 else reference
        return continued.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                        return_last_state)
    out = _scan_fn(u, delta, A.float(), B.contiguous(), C.contiguous(), None if D is None else D.float(), z,
                   None if delta_bias is None else delta_bias.float(), delta_softplus, return_last_state)
    if return_last_state:
        y, last = out
        return y, last.float()
    return out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """mamba-ssm's Triton step, viewing channels as (groups, channels per group) heads."""
    batch, dim = x.shape
    groups = B.shape[1]
    per = dim // groups
    state_view = state.view(batch, groups, per, state.shape[-1])
    y = _state_update(
        state_view, x.view(batch, groups, per), dt.view(batch, groups, per), A.view(groups, per, -1), B, C,
        None if D is None else D.view(groups, per), None if z is None else z.view(batch, groups, per),
        None if dt_bias is None else dt_bias.view(groups, per), dt_softplus,
    )
    return y.view(batch, dim)


def causal_conv1d(x, weight, bias=None, activation="silu", initial_state=None, return_final_states=True):
    """causal-conv1d's kernel for a fresh sequence (our Triton conv for a continued one, or without
    causal-conv1d); the conv state is the last ``width`` inputs."""
    if _conv_fn is None or initial_state is not None:
        return triton_backend.causal_conv1d(x, weight, bias, activation, initial_state,
                                            return_final_states=return_final_states)
    width = weight.shape[1]
    out = _conv_fn(x, weight, bias, activation=activation)
    if not return_final_states:
        return out, None
    new_state = torch.nn.functional.pad(x, (max(width - x.shape[-1], 0), 0))[..., -width:]
    return out, new_state


def causal_conv1d_update(x, conv_state, weight, bias=None, activation="silu"):
    if _conv_update is None:
        return triton_backend.causal_conv1d_update(x, conv_state, weight, bias, activation)
    return _conv_update(x, conv_state, weight, bias, activation)
