"""What the conv kernels read of a packed row: each step's clamped distance back to its document's first step.

A causal conv of width W mixes output t with the inputs t-W+1..t, so in a packed row (``document_starts``) the
masks of output t depend only on

    since[t] = steps from the last document start at or before t to t, clamped to W-1 (W-1 where none is that
               near): output t reads input t-k (0 <= k < W) iff since[t] >= k.

The backward's masks follow from the same numbers: the output gradient at t+k reaches input t exactly where
output t+k read input t, i.e. iff since[t+k] >= k. So the kernels load one value per output at the output's own
step (the backward also those of the first W-1 steps of the run after each run, as it loads that run's inputs),
where start flags had to be read at t, t-1, t-2 from a run and the run before it (and, in the backward, at
t+1..t+3 from the run after too), and each mask is one saturating add (``conv_runs.window_keeps``). ``since`` is
computed once per conv call from the (batch, L) bool starts by one small launch (``conv_document_since``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SINCE_BLOCK = 1024  # steps per program
SINCE_NUM_WARPS = 4


@triton.jit
def _conv_document_since_kernel(starts_ptr, since_ptr, length, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (batch, blocks of BLOCK steps). starts (batch, L) uint8, 1 at a document's first step; since (batch, L)
    contiguous. Each step reads the starts at it and the W-2 steps before it (the neighbours' bytes: L1 hits)."""
    row = tl.program_id(0).to(tl.int64) * length
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    since = tl.full((BLOCK,), WIDTH - 1, tl.float32)  # fp32, not int32: the interpreter's int32 -> bf16 is wrong
    for k in tl.static_range(WIDTH - 1):  # a start k steps back, k = 0 .. W-2
        start = tl.load(starts_ptr + row + t - k, mask=(t >= k) & (t - k < length), other=0)
        since = tl.minimum(since, tl.where(start != 0, float(k), WIDTH - 1.0))
    tl.store(since_ptr + row + t, since.to(since_ptr.dtype.element_ty), mask=t < length)


def conv_document_since(document_starts: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """``since`` (module docstring) of (batch, L) ``document_starts`` (True or nonzero at a document's first step)
    for a conv of ``width`` taps: (batch, L) contiguous in ``dtype``, the activations' (small integers are exact in
    bf16 and fp16), which the conv kernels load at the inputs' tile shape and element size so that it arrives in
    the inputs' register layout (``conv_runs.since_runs``). One launch, reading L bytes and writing L elements
    per row."""
    starts = document_starts if document_starts.dtype == torch.bool else document_starts != 0
    starts = starts.contiguous().view(torch.uint8)  # same bytes: the kernel reads them as a byte pointer
    batch, length = starts.shape
    since = torch.empty((batch, length), device=starts.device, dtype=dtype)
    grid = (batch, triton.cdiv(length, SINCE_BLOCK))
    _conv_document_since_kernel[grid](starts, since, length, WIDTH=width, BLOCK=SINCE_BLOCK,
                                      num_warps=SINCE_NUM_WARPS)
    return since
