"""Linears that read the same input, run as one GEMM: q/k/v, gate/up, a Mamba mixer's two input projections.

Why: at decode batch sizes every projection is a matrix-vector product bound by reading its weight, and cuBLAS
reads a small weight slowly (k_proj and v_proj of a 15B model, 10 MB each, at under half the bandwidth of the
large ones, plus a split-K reduction each). One GEMM over the concatenated weight reads it at full speed and
launches once.

No weight is copied for good: the packed matrix is allocated once, the weights are copied into it, and each
module's weight (and bias) becomes a view of its rows, so the model computes exactly what it did, holds no
second copy, and still saves normally (``save_pretrained`` clones views that share a buffer). Packing an
already packed group finds the existing buffer and changes nothing. The modules' Parameter objects are new ones:
an optimizer built before the packing would hold the old ones, so serve a model packed, or pack it (build the
engine) before making its optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LinearGroup:
    """Linears applied to one input; ``__call__`` returns their outputs, from one GEMM where they could be
    packed (plain ``nn.Linear`` modules of one dtype, device and input width, all with biases or none) and
    ``pack`` allows it, else one GEMM each."""

    def __init__(self, linears: Sequence[nn.Linear], pack: bool = True):
        self.linears = list(linears)
        self.sizes = [linear.out_features for linear in self.linears]
        packed = _pack(self.linears) if pack and _can_pack(self.linears) else None
        self.weight, self.bias = packed if packed is not None else (None, None)

    @property
    def packed(self) -> bool:
        return self.weight is not None

    def __call__(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        if self.weight is None:
            return [linear(inputs) for linear in self.linears]
        return list(F.linear(inputs, self.weight, self.bias).split(self.sizes, dim=-1))


def _can_pack(linears: Sequence[nn.Linear]) -> bool:
    first = linears[0].weight
    return (
        len(linears) > 1
        and all(type(linear) is nn.Linear for linear in linears)  # not LoRA, quantized or hooked subclasses
        and all(linear.weight.dtype == first.dtype and linear.weight.device == first.device for linear in linears)
        and all(linear.in_features == linears[0].in_features for linear in linears)
        and len({linear.bias is None for linear in linears}) == 1
    )


@torch.no_grad()
def _pack(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = _existing_buffer([linear.weight for linear in linears])
    if weight is None:
        weight = torch.cat([linear.weight for linear in linears])
        _rebind(linears, "weight", weight)
    if linears[0].bias is None:
        return weight, None
    bias = _existing_buffer([linear.bias for linear in linears])
    if bias is None:
        bias = torch.cat([linear.bias for linear in linears])
        _rebind(linears, "bias", bias)
    return weight, bias


def _rebind(linears: Sequence[nn.Linear], name: str, packed: torch.Tensor) -> None:
    """Make each module's ``name`` parameter a view of its rows of ``packed`` (freeing the old tensor)."""
    start = 0
    for linear in linears:
        old = getattr(linear, name)
        rows = old.shape[0]
        setattr(linear, name, nn.Parameter(packed[start : start + rows], requires_grad=old.requires_grad))
        start += rows


def _existing_buffer(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The packed tensor these are consecutive, contiguous row blocks of, if an earlier packing made one."""
    first = tensors[0]
    if not all(t.is_contiguous() and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
               for t in tensors):
        return None
    end = first.data_ptr()
    for tensor in tensors:
        if tensor.data_ptr() != end:
            return None
        end += tensor.numel() * tensor.element_size()
    rows = sum(t.shape[0] for t in tensors)
    return first.detach().as_strided((rows, *first.shape[1:]), first.stride())
