"""Tile sizes of the selective-scan kernels, in one place because forward and backward must agree on them.

The scan runs one program per (batch, block of channels). Inside a program, time advances chunk by chunk:
a chunk of ``chunk`` steps is scanned in parallel (``tl.associative_scan``) and the state is carried to the
next chunk, so the work is parallel over (batch, channels) and sequential over L, as in mamba-ssm's CUDA
kernel. The forward stores the state at the start of every chunk so the backward can rebuild each chunk's
states without rerunning the whole sequence; the backward therefore has to use the forward's chunk length.

A chunk is a (block_d, chunk) tile with time contiguous: bf16 loads put 8 consecutive steps in each thread
and lanes side by side (16 lanes cover a chunk of 128 steps), so the scan never crosses warps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScanTiles:
    """Per-program tile: ``block_d`` channels x N states x ``chunk`` time steps, run by ``num_warps`` warps."""

    block_d: int
    chunk: int
    num_warps: int


# Chosen by `benchmarks/kernel_speed.py --sweep-tiles` on an H100 at Apriel's shapes; see benchmarks/RESULTS.md.
FORWARD_TILES = ScanTiles(block_d=8, chunk=128, num_warps=4)
BACKWARD_TILES = ScanTiles(block_d=8, chunk=128, num_warps=4)


def channel_block(channels_per_group: int, cap: int) -> int:
    """Largest power of two <= ``cap`` that divides ``channels_per_group``.

    A program's channels then all read the same B/C group, so B and C are loaded once per chunk as an
    (N, chunk) tile and broadcast over the channels instead of gathered per channel. As the block divides
    the group, it also divides ``dim``, so no program needs a channel mask.
    """
    block = 1
    while block * 2 <= cap and channels_per_group % (block * 2) == 0:
        block *= 2
    return block


def state_slots(n_chunks: int, keep_every_chunk: bool) -> int:
    """Slots of the per-program state buffer: one per chunk boundary when the backward needs them (slot c =
    the state before chunk c, slot n_chunks = the final state), else two used alternately."""
    return n_chunks + 1 if keep_every_chunk else 2
