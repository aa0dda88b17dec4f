"""Tile sizes of the selective-scan kernels, in one place because forward and backward must agree on the chunk.

Both kernels run one program per (batch, channel), parallel over those and sequential over L, as mamba-ssm's
CUDA kernel is. Inside a program, time advances chunk by chunk: the chunk's (N, chunk) tile of all states is
scanned along time in parallel (``tl.associative_scan``) and the state (the backward: dh) is carried to the
next chunk in registers. The forward stores the state at the start of every chunk so the backward can rebuild
each chunk's states without rerunning the whole sequence; the backward therefore walks the same chunks.

Time is the contiguous axis of every tile: each thread holds a run of consecutive steps (8 in the forward, as
wide as a bf16 load allows; 4 in the backward, as wide as its fp32 atomic adds) and lanes sit side by side, so
a chunk's scan stays inside a warp; sums over the N states (y, and the backward's dh . B) are the only
reductions across threads. With one program per channel the gradients of B and C are plain products added
atomically (one add per channel, state and step, as mamba-ssm does).

An earlier design (programs of 8 channels, a static loop over states, the state carried between chunks
through memory behind a barrier) was 1.5x (forward) to 2.4x (backward) slower on an H100 (measured at an
earlier stop; benchmarks/RESULTS.md has the current numbers and what made the backward faster since).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScanTiles:
    """The chunk shared by both kernels and each kernel's warps per program."""

    chunk: int
    forward_num_warps: int
    backward_num_warps: int


# Chosen by `benchmarks/kernel_speed.py --sweep-tiles` at Apriel's shapes; see benchmarks/RESULTS.md.
SCAN_TILES = ScanTiles(chunk=64, forward_num_warps=1, backward_num_warps=1)
