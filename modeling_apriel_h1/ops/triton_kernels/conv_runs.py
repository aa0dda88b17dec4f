"""Step shifts for the depthwise causal convolution without misaligned loads: runs of 8 steps per thread.

A causal conv mixes each step with the W-1 steps before it. Loading each shifted window separately (as a plain
tile would) costs W misaligned loads per input and, in the backward, W recomputations of the activation's
derivative per output. Here a tile is (channels, runs, 8): each thread loads whole runs of 8 consecutive steps
(16 bytes of bf16, lanes side by side along time, so loads stay coalesced), ``split_run`` turns the last axis
into 8 per-step tensors held by the same thread, and a shift by one step is a choice of register. The W-1 steps
before a run (and, in the backward, after it) come from a second aligned load of the neighbouring run, which
the neighbouring lane has just loaded, so it is served by the L1 cache.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .device_functions import silu_grad

RUN: tl.constexpr = tl.constexpr(8)  # steps per thread per load: 16 bytes of bf16
MAX_CONV_WIDTH = 4  # a run's outputs reach back at most 3 steps into the run before it, as in causal-conv1d
TILE_STEPS = 128  # steps per conv program (16 runs); packed rows' starts are listed per tile (conv_document_starts)


@triton.jit
def split_run(tile):
    """(rows, runs, 8) -> its 8 steps, each (rows, runs), in time order."""
    rows: tl.constexpr = tile.shape[0]
    runs: tl.constexpr = tile.shape[1]
    evens, odds = tl.split(tl.reshape(tile, (rows, runs, 4, 2)))  # steps 0 2 4 6 | 1 3 5 7
    step_0_4, step_2_6 = tl.split(tl.reshape(evens, (rows, runs, 2, 2)))
    step_1_5, step_3_7 = tl.split(tl.reshape(odds, (rows, runs, 2, 2)))
    s0, s4 = tl.split(step_0_4)
    s2, s6 = tl.split(step_2_6)
    s1, s5 = tl.split(step_1_5)
    s3, s7 = tl.split(step_3_7)
    return s0, s1, s2, s3, s4, s5, s6, s7


@triton.jit
def join_run(s0, s1, s2, s3, s4, s5, s6, s7):
    """8 steps, each (rows, runs), in time order -> (rows, runs, 8); the inverse of ``split_run``."""
    rows: tl.constexpr = s0.shape[0]
    runs: tl.constexpr = s0.shape[1]
    evens = tl.reshape(tl.join(tl.join(s0, s4), tl.join(s2, s6)), (rows, runs, 4))
    odds = tl.reshape(tl.join(tl.join(s1, s5), tl.join(s3, s7)), (rows, runs, 4))
    return tl.reshape(tl.join(evens, odds), (rows, runs, 8))


@triton.jit
def as_runs(tile, RUNS: tl.constexpr):
    """(rows, RUNS * 8) -> (rows, RUNS, 8). Loads and stores use the 2-D shape, whose unit-stride time axis is
    what gives them wide, coalesced accesses; the 3-D view only names each thread's run as an axis."""
    return tl.reshape(tile, (tile.shape[0], RUNS, RUN))


@triton.jit
def load_inputs(rows_ptr, history_rows, p, length, WIDTH: tl.constexpr, HAS_HISTORY: tl.constexpr):
    """Inputs at positions ``p`` (1, steps) of each row as (rows, steps) fp32: the tensor where 0 <= p < L, the
    conv state's entry ``WIDTH + p`` where -WIDTH <= p < 0 (the state holds the last WIDTH inputs, oldest first),
    else 0. ``rows_ptr``/``history_rows`` are (rows, 1) row pointers."""
    inputs = tl.load(rows_ptr + p, mask=(p >= 0) & (p < length), other=0.0).to(tl.float32)
    if HAS_HISTORY:
        inputs += tl.load(history_rows + WIDTH + p, mask=(p < 0) & (p >= -WIDTH), other=0.0).to(tl.float32)
    return inputs


@triton.jit
def load_runs(rows_ptr, history_rows, p, length, WIDTH: tl.constexpr, HAS_HISTORY: tl.constexpr,
              RUNS: tl.constexpr):
    """``load_inputs`` at positions ``p`` (1, RUNS * 8), as (rows, RUNS, 8)."""
    return as_runs(load_inputs(rows_ptr, history_rows, p, length, WIDTH, HAS_HISTORY), RUNS)


@triton.jit
def input_runs(x_rows, history_rows, p, length, WIDTH: tl.constexpr, HAS_HISTORY: tl.constexpr, RUNS: tl.constexpr):
    """The 8 steps of each run, (rows, RUNS) each, then the last 3 steps of the run before it (oldest first):
    all the inputs a run's outputs read."""
    x0, x1, x2, x3, x4, x5, x6, x7 = split_run(load_runs(x_rows, history_rows, p, length, WIDTH, HAS_HISTORY, RUNS))
    _, _, _, _, _, b5, b6, b7 = split_run(load_runs(x_rows, history_rows, p - RUN, length, WIDTH, HAS_HISTORY, RUNS))
    return x0, x1, x2, x3, x4, x5, x6, x7, b5, b6, b7


@triton.jit
def filter_taps(weight_ptr, bias_ptr, channels, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Each channel's filter as (rows, 1) fp32 tensors, newest input's tap first: ``w_new`` multiplies x[t],
    ``w_1`` x[t-1], and so on; taps a narrower filter lacks are zeros (W is 2 to 4, as in causal-conv1d); then
    the bias (zeros without one)."""
    weight_rows = weight_ptr + channels[:, None] * WIDTH
    w_new = tl.load(weight_rows + WIDTH - 1).to(tl.float32)
    w_1 = tl.load(weight_rows + WIDTH - 2).to(tl.float32)
    w_2 = tl.zeros_like(w_new)
    w_3 = tl.zeros_like(w_new)
    bias = tl.zeros_like(w_new)
    if WIDTH >= 3:
        w_2 = tl.load(weight_rows + WIDTH - 3).to(tl.float32)
    if WIDTH >= 4:
        w_3 = tl.load(weight_rows + WIDTH - 4).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels[:, None]).to(tl.float32)
    return w_new, w_1, w_2, w_3, bias


@triton.jit
def output_grad(dout, x, x_1, x_2, x_3, w_new, w_1, w_2, w_3, bias, SILU: tl.constexpr):
    """g at one step, each operand a tensor of that step (per row and run), or at a tile's steps (the packed-row
    fix-up): the output gradient through the activation; ``x_k`` is the input k steps back."""
    if SILU:
        return dout * silu_grad(bias + w_new * x + w_1 * x_1 + w_2 * x_2 + w_3 * x_3)
    return dout


@triton.jit
def input_grad(g, g_1, g_2, g_3, w_new, w_1, w_2, w_3):
    """dx at one step: ``g_k`` is g k steps later (those outputs read this input through older taps)."""
    return w_new * g + w_1 * g_1 + w_2 * g_2 + w_3 * g_3
