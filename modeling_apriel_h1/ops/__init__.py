"""One place that chooses how the Mamba operations run.

Order for ``"auto"``: mamba-ssm / causal-conv1d CUDA kernels when importable and the tensors are on CUDA,
else our Triton kernels on CUDA, else the PyTorch reference. ``APRIEL_H1_KERNELS`` (or the config field
``kernel_backend``) forces one of ``"reference"``, ``"triton"``, ``"mamba_ssm"`` for tests and benchmarks;
asking for one that cannot run here is an error, not a silent fallback.

Rows that pack several documents need the scan's state and the conv window to restart at each document
(``document_starts``). mamba-ssm's Mamba-1 ``selective_scan_fn`` has no input for that, so such rows run on our
Triton kernels even where mamba-ssm is chosen: ``backend_for_packed_rows``.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from . import reference

BACKENDS = ("auto", "reference", "triton", "mamba_ssm")
ENV_VAR = "APRIEL_H1_KERNELS"


@functools.cache
def _load(name: str) -> ModuleType | None:
    """Import a backend module, or return None when its packages are missing.

    Cached: every Mamba layer asks at every decoding step, and a failed import is not cached by Python.
    """
    try:
        if name == "mamba_ssm":
            from . import mamba_ssm_backend as module
        elif name == "triton":
            from . import triton_backend as module
        else:
            return reference
    except ImportError:
        return None
    return module


def resolve_ops(device: torch.device, preference: str | None = None) -> ModuleType:
    """Return the module whose functions (``selective_scan``, ``selective_state_update``, ``causal_conv1d``,
    ``causal_conv1d_update``, same signatures as ``reference``) will run on ``device``."""
    choice = os.environ.get(ENV_VAR) or preference or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend {choice!r} is unknown; choose one of {BACKENDS} (via {ENV_VAR} or config.kernel_backend)")
    if choice == "reference":
        return reference
    on_cuda = device.type == "cuda"
    if choice != "auto":
        module = _load(choice) if on_cuda else None
        if module is None:
            raise RuntimeError(
                f"kernel backend {choice!r} was forced but cannot run on {device}: it needs a CUDA device"
                + (" and mamba-ssm installed (pip install 'apriel-h1[kernels]')" if choice == "mamba_ssm" else " and triton")
            )
        return module
    if not on_cuda:
        return reference
    for name in ("mamba_ssm", "triton"):
        module = _load(name)
        if module is not None:
            return module
    return reference


def backend_for_packed_rows(ops: ModuleType) -> ModuleType:
    """The backend that runs rows packing several documents, given the one ``resolve_ops`` chose.

    Backends that accept ``document_starts`` (reference, Triton) keep the rows; mamba-ssm hands them to our
    Triton kernels (on CUDA, where mamba-ssm runs, triton is installed with torch). A forced mamba-ssm is
    overridden here on purpose: its scan would silently carry state from one document into the next.
    """
    if getattr(ops, "SUPPORTS_DOCUMENT_STARTS", False):
        return ops
    return _load("triton") or reference
