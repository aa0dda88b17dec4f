"""What the conv kernels read of a packed row's document starts: each step's clamped distance back to its
document's first step, the row's starts in order, how many there are, and for each conv tile the stretches of
that list that concern it.

A causal conv of width W mixes output t with the inputs t-W+1..t, so in a packed row (``document_starts``) the
masks of output t depend only on

    since[t] = steps from the last document start at or before t to t, clamped to 3, the widest conv's W-1
               (3 where none is that near): output t reads input t-k (0 <= k < W) iff since[t] >= k.

Only the W-1 outputs from each start on have a mask below one, so the conv kernels compute every tile as if the
row held one sequence, and what those outputs change is then corrected (``conv_document_fixup``). In the
forward the programs whose tile holds such outputs do it, and each learns whether it is one from one scalar load
of ``tile_starts`` (how many starts, from 2 steps before the tile to its end, and where in ``start_positions``
they begin): the forward is bound by instruction issue, so on the many tiles no start reaches a packed row must
cost it next to nothing. The backward's fix-up visits each row's ``start_counts`` starts and rewrites dx of the
REWRITE_RUNS aligned runs of 8 steps from the one holding step s-(W-1) of each start s; the backward kernel
leaves those runs to it, and learns which they are from a second stretch of the list per tile (the starts from
REWRITE_BEFORE steps before the tile to REWRITE_AFTER after its end, the widest reach for W = 2..4). None of this
depends on the conv's width, so a model computes it once per batch for all its Mamba layers (``triton_backend``
keeps the last one).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .conv_runs import MAX_CONV_WIDTH, RUN, TILE_STEPS

SINCE_CLAMP = MAX_CONV_WIDTH - 1
REWRITE_RUNS = 2  # the backward fix-up's runs per start: they hold its steps s-(W-1) .. s+(W-2), 2W-2 <= 8 of them
# A start s's runs begin at 8 * floor((s - (W-1)) / 8), so they reach a tile of steps [T, T + TILE_STEPS) iff
# T - 8 * (REWRITE_RUNS - 1) + W - 1 <= s < T + TILE_STEPS + W - 1; widest at W = 2 below and W = 4 above.
REWRITE_BEFORE = RUN.value * (REWRITE_RUNS - 1) - 1
REWRITE_AFTER = MAX_CONV_WIDTH - 1
STARTS_BLOCK = 1024  # steps per program, a multiple of TILE_STEPS
STARTS_NUM_WARPS = 4


class ConvDocumentStarts(NamedTuple):
    """A packed row's document starts in the form the conv kernels read them (module docstring)."""

    since: torch.Tensor  # (batch, L) uint8, contiguous
    tile_starts: torch.Tensor  # (batch, tiles of TILE_STEPS, 4) int32: forward's count and first index, backward's
    start_positions: torch.Tensor  # (batch, L) int32: each row's start steps, increasing, in its first entries
    start_counts: torch.Tensor  # (batch,) int32: starts in each row


@triton.jit
def starts_before(through_row, step, length):
    """How many of the row's starts lie before ``step`` (any integers): the running count one step earlier,
    clamped into the row."""
    step = tl.minimum(step, length)
    return tl.load(through_row + step - 1, mask=step > 0, other=0)


@triton.jit
def _conv_document_starts_kernel(starts_ptr, through_ptr, since_ptr, tiles_ptr, positions_ptr, counts_ptr, length,
                                 n_tiles, CLAMP: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr,
                                 REWRITE_BEFORE: tl.constexpr, REWRITE_AFTER: tl.constexpr):
    """Grid (batch, blocks of BLOCK steps). starts (batch, L) uint8, 1 at a document's first step; through (batch,
    L) int32, the running count of starts (computed beforehand); since (batch, L) uint8; tiles (batch, n_tiles, 4)
    int32; positions (batch, L) int32; counts (batch,) int32. Each step reads the starts at it and the CLAMP-1
    steps before it (the neighbours' bytes, L1 hits); each start writes its step at its place in the row's list,
    which the running count gives; each tile whose first step is in the block counts the starts from CLAMP-1
    steps before it to its end (the forward's), then those from REWRITE_BEFORE steps before it to REWRITE_AFTER
    after its end (the backward's), each with the index of its first."""
    batch = tl.program_id(0).to(tl.int64)
    row = batch * length
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    since = tl.full((BLOCK,), CLAMP, tl.int32)
    for k in tl.static_range(CLAMP):  # a start k steps back, k = 0 .. CLAMP-1
        start = tl.load(starts_ptr + row + t - k, mask=(t >= k) & (t - k < length), other=0)
        since = tl.minimum(since, tl.where(start != 0, k, CLAMP))
    tl.store(since_ptr + row + t, since.to(tl.uint8), mask=t < length)
    is_start = (since == 0) & (t < length)
    through = tl.load(through_ptr + row + t, mask=is_start, other=1)
    tl.store(positions_ptr + row + through - 1, t, mask=is_start)

    tile = tl.program_id(1) * (BLOCK // TILE) + tl.arange(0, BLOCK // TILE)
    entry = tiles_ptr + (batch * n_tiles + tile) * 4
    in_row = tile < n_tiles
    first = starts_before(through_ptr + row, tile * TILE - (CLAMP - 1), length)  # cut outputs in the tile
    tl.store(entry, starts_before(through_ptr + row, tile * TILE + TILE, length) - first, mask=in_row)
    tl.store(entry + 1, first, mask=in_row)
    first = starts_before(through_ptr + row, tile * TILE - REWRITE_BEFORE, length)  # runs the fix-up rewrites
    tl.store(entry + 2, starts_before(through_ptr + row, tile * TILE + TILE + REWRITE_AFTER, length) - first,
             mask=in_row)
    tl.store(entry + 3, first, mask=in_row)
    tl.store(counts_ptr + batch, tl.load(through_ptr + row + length - 1), mask=tl.program_id(1) == 0)


def conv_document_starts(document_starts: torch.Tensor) -> ConvDocumentStarts:
    """``since``, ``tile_starts``, ``start_positions`` and ``start_counts`` (module docstring) of (batch, L)
    ``document_starts`` (True or nonzero at a document's first step). Two launches (the running count, then this
    module's kernel)."""
    starts = document_starts if document_starts.dtype == torch.bool else document_starts != 0
    starts = starts.contiguous().view(torch.uint8)  # same bytes: the kernel reads them as a byte pointer
    batch, length = starts.shape
    n_tiles = triton.cdiv(length, TILE_STEPS)
    through = starts.cumsum(-1, dtype=torch.int32)
    since = torch.empty((batch, length), device=starts.device, dtype=torch.uint8)
    tiles = torch.empty((batch, n_tiles, 4), device=starts.device, dtype=torch.int32)
    positions = torch.empty((batch, length), device=starts.device, dtype=torch.int32)
    counts = torch.empty((batch,), device=starts.device, dtype=torch.int32)
    grid = (batch, triton.cdiv(length, STARTS_BLOCK))
    _conv_document_starts_kernel[grid](starts, through, since, tiles, positions, counts, length, n_tiles,
                                       CLAMP=SINCE_CLAMP, BLOCK=STARTS_BLOCK, TILE=TILE_STEPS,
                                       REWRITE_BEFORE=REWRITE_BEFORE, REWRITE_AFTER=REWRITE_AFTER,
                                       num_warps=STARTS_NUM_WARPS)
    return ConvDocumentStarts(since, tiles, positions, counts)
