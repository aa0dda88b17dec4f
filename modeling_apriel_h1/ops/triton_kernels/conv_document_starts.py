"""What the packed-row conv fix-up reads of a row's document starts: where they are, and each step's clamped
distance back to its document's first step.

A causal conv of width W mixes output t with the inputs t-W+1..t, so in a packed row (``document_starts``) the
masks of output t depend only on

    since[t] = steps from the last document start at or before t to t, clamped to W-1 (W-1 where none is that
               near): output t reads input t-k (0 <= k < W) iff since[t] >= k.

Only the W-1 outputs from each start on have a mask below one, so the conv kernels run packed rows unchanged
and ``conv_document_fixup`` then recomputes what those outputs change: it visits each row's starts from a
compact list (``start_positions``, the first ``start_counts`` entries of each row, in no particular order).
Both are computed once per conv call from the (batch, L) bool starts by one small launch
(``conv_document_starts``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

STARTS_BLOCK = 1024  # steps per program
STARTS_NUM_WARPS = 4


class ConvDocumentStarts(NamedTuple):
    """A packed row's document starts in the form the conv fix-up reads them (module docstring)."""

    since: torch.Tensor  # (batch, L) uint8, contiguous
    start_counts: torch.Tensor  # (batch,) int32: starts in each row
    start_positions: torch.Tensor  # (batch, L) int32: each row's start steps in its first start_counts entries


@triton.jit
def _conv_document_starts_kernel(starts_ptr, since_ptr, counts_ptr, positions_ptr, length, WIDTH: tl.constexpr,
                                 BLOCK: tl.constexpr):
    """Grid (batch, blocks of BLOCK steps). starts (batch, L) uint8, 1 at a document's first step; since (batch, L)
    uint8; counts (batch,) int32, zeroed; positions (batch, L) int32. Each step reads the starts at it and the
    W-2 steps before it (the neighbours' bytes, L1 hits); each start takes the next free entry of its row's list
    by an atomic add on the row's count."""
    batch = tl.program_id(0).to(tl.int64)
    row = batch * length
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    since = tl.full((BLOCK,), WIDTH - 1, tl.int32)
    for k in tl.static_range(WIDTH - 1):  # a start k steps back, k = 0 .. W-2
        start = tl.load(starts_ptr + row + t - k, mask=(t >= k) & (t - k < length), other=0)
        since = tl.minimum(since, tl.where(start != 0, k, WIDTH - 1))
    tl.store(since_ptr + row + t, since.to(tl.uint8), mask=t < length)
    is_start = since == 0
    slot = tl.atomic_add(counts_ptr + batch + tl.zeros_like(t), 1, mask=is_start & (t < length), sem="relaxed")
    tl.store(positions_ptr + row + slot, t, mask=is_start & (t < length))


def conv_document_starts(document_starts: torch.Tensor, width: int) -> ConvDocumentStarts:
    """``since``, ``start_counts`` and ``start_positions`` (module docstring) of (batch, L) ``document_starts``
    (True or nonzero at a document's first step) for a conv of ``width`` taps. One launch (and the zeroing of
    the counts), reading L bytes and writing 5L bytes per row."""
    starts = document_starts if document_starts.dtype == torch.bool else document_starts != 0
    starts = starts.contiguous().view(torch.uint8)  # same bytes: the kernel reads them as a byte pointer
    batch, length = starts.shape
    since = torch.empty((batch, length), device=starts.device, dtype=torch.uint8)
    counts = torch.zeros((batch,), device=starts.device, dtype=torch.int32)
    positions = torch.empty((batch, length), device=starts.device, dtype=torch.int32)
    grid = (batch, triton.cdiv(length, STARTS_BLOCK))
    _conv_document_starts_kernel[grid](starts, since, counts, positions, length, WIDTH=width, BLOCK=STARTS_BLOCK,
                                       num_warps=STARTS_NUM_WARPS)
    return ConvDocumentStarts(since, counts, positions)
