"""Backward depthwise causal convolution: gradients for x, weight and bias.

With ``pre[q] = bias + sum_k w_k x[q - (W-1) + k]`` and ``g = dout * act'(pre)``:

    dx[p] = sum_s w_{W-1-s} g[p + s],   dw_k = sum_q g[q] x[q - (W-1) + k],   dbias = sum_q g[q]

Tiles are (channels, runs, 8 steps) (``conv_runs``). g is computed once per step, plus the first W-1 steps of the
run after each run (which dx needs): 11 activation derivatives per 8 steps, where shifted windows would need 32.
The gradient of the conv state that preceded x is left to the caller (it touches only the first W-1 outputs).
In a packed row (``document_starts``) the inputs each output reads are masked as in the forward, and g reaches
an input through a tap exactly where that tap's input was kept: each output's masks (``conv_document_since``)
give both, read at the output's own step (and at the first W-1 steps of the run after, with that run's inputs).
Tiles with no document start near them skip the masks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .causal_conv1d_fwd import CONV_BLOCK_D, CONV_NUM_WARPS, CONV_RUNS, conv_tile
from .conv_runs import (
    RUN,
    as_runs,
    document_starts_near,
    filter_taps,
    input_runs,
    join_run,
    load_runs,
    since_runs,
    split_run,
    window_keeps,
)
from .device_functions import silu_grad


@triton.jit
def output_grad(dout, x, x_1, x_2, x_3, w_new, w_1, w_2, w_3, bias, SILU: tl.constexpr):
    """g at one step of every (row, run): the output gradient through the activation; ``x_k`` is the input k
    steps back."""
    if SILU:
        return dout * silu_grad(bias + w_new * x + w_1 * x_1 + w_2 * x_2 + w_3 * x_3)
    return dout


@triton.jit
def input_grad(g, g_1, g_2, g_3, w_new, w_1, w_2, w_3):
    """dx at one step: ``g_k`` is g k steps later (those outputs read this input through older taps)."""
    return w_new * g + w_1 * g_1 + w_2 * g_2 + w_3 * g_3


@triton.jit
def run_input_grads(g0, g1, g2, g3, g4, g5, g6, g7,
                    r1_1, r1_2, r1_3, r1_4, r1_5, r1_6, r1_7, r1_8,
                    r2_2, r2_3, r2_4, r2_5, r2_6, r2_7, r2_8, r2_9,
                    r3_3, r3_4, r3_5, r3_6, r3_7, r3_8, r3_9, r3_10, w_new, w_1, w_2, w_3):
    """dx of a run's 8 steps, (rows, runs, 8): step i gets its own g and the gradients of the outputs 1, 2 and 3
    steps later as they reach it (``rk_j``: output j's gradient as it reaches the input k steps back; j = 8, 9,
    10 are the next run's first outputs). In a packed row those are masked where a document starts between."""
    return join_run(
        input_grad(g0, r1_1, r2_2, r3_3, w_new, w_1, w_2, w_3),
        input_grad(g1, r1_2, r2_3, r3_4, w_new, w_1, w_2, w_3),
        input_grad(g2, r1_3, r2_4, r3_5, w_new, w_1, w_2, w_3),
        input_grad(g3, r1_4, r2_5, r3_6, w_new, w_1, w_2, w_3),
        input_grad(g4, r1_5, r2_6, r3_7, w_new, w_1, w_2, w_3),
        input_grad(g5, r1_6, r2_7, r3_8, w_new, w_1, w_2, w_3),
        input_grad(g6, r1_7, r2_8, r3_9, w_new, w_1, w_2, w_3),
        input_grad(g7, r1_8, r2_9, r3_10, w_new, w_1, w_2, w_3),
    )


@triton.jit
def document_output_grad(dout, x, x_1, x_2, x_3, since, w_new, w_1, w_2, w_3, bias, SILU: tl.constexpr):
    """``output_grad`` in a packed row (``since``: t's clamped distance back to its document's first step), then
    g as it reaches the inputs 1, 2 and 3 steps back: zero where the output read them as zero (before its
    document). dx sums these (an input's gradient from a later output of another document is zero), and dw_k
    pairs them with the unmasked inputs, which equals pairing g with the masked ones, so that no masked input
    outlives the activation's derivative (kept for dw, they took the kernel that masks every tile to 159
    registers against 102, sm_90)."""
    keep_1, keep_2, keep_3 = window_keeps(since)
    g = output_grad(dout, x, x_1 * keep_1, x_2 * keep_2, x_3 * keep_3, w_new, w_1, w_2, w_3, bias, SILU)
    return g, g * keep_1, g * keep_2, g * keep_3


@triton.jit
def accumulate_filter_grads(dweight_ptr, dbias_ptr, channels, in_dim, g, reach_1, reach_2, reach_3, window_1,
                            window_2, window_3, x_now, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """dw_k and dbias of this tile, added atomically: g (rows, runs, 8) paired with the input each output read
    ``k`` steps back (``window_k``, same shape; ``x_now`` for the newest tap), as ``reach_k`` (g where that input
    is in the output's document, else 0; g itself in a row of one sequence)."""
    tap_rows = dweight_ptr + channels * WIDTH + WIDTH - 1  # the newest input's tap; older ones precede it
    tl.atomic_add(tap_rows, tl.sum(tl.sum(g * x_now, axis=2), axis=1), mask=in_dim, sem="relaxed")
    tl.atomic_add(tap_rows - 1, tl.sum(tl.sum(reach_1 * window_1, axis=2), axis=1), mask=in_dim, sem="relaxed")
    if WIDTH >= 3:
        tl.atomic_add(tap_rows - 2, tl.sum(tl.sum(reach_2 * window_2, axis=2), axis=1), mask=in_dim, sem="relaxed")
    if WIDTH >= 4:
        tl.atomic_add(tap_rows - 3, tl.sum(tl.sum(reach_3 * window_3, axis=2), axis=1), mask=in_dim, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + channels, tl.sum(tl.sum(g, axis=2), axis=1), mask=in_dim, sem="relaxed")


@triton.jit
def _causal_conv1d_bwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, dout_ptr, dx_ptr, dweight_ptr, dbias_ptr,
    dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d, stride_dout_b, stride_dout_d,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, RUNS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr, HAS_DOCUMENT_STARTS: tl.constexpr,
    SKIP_FAR_TILES: tl.constexpr,
):
    """Grid (batch, dim blocks, time blocks of RUNS * 8 steps). dx (batch, dim, L) contiguous in x's dtype;
    dweight (dim, WIDTH) and dbias (dim,) fp32, zeroed, accumulated atomically over batch rows and time blocks;
    since (batch, L) in x's dtype, ``conv_document_since`` for this WIDTH, as in the forward."""
    batch, channels, in_dim, p = conv_tile(dim, BLOCK_D, RUNS)
    rows = channels[:, None]  # (BLOCK_D, 1)
    x_rows = x_ptr + batch * stride_x_b + rows * stride_x_d
    history_rows = history_ptr + batch * stride_h_b + rows * stride_h_d
    dout_rows = dout_ptr + batch * stride_dout_b + rows * stride_dout_d
    w_new, w_1, w_2, w_3, bias = filter_taps(weight_ptr, bias_ptr, channels, WIDTH, HAS_BIAS)
    x0, x1, x2, x3, x4, x5, x6, x7, b5, b6, b7 = input_runs(x_rows, history_rows, p, length, WIDTH, HAS_HISTORY, RUNS)
    a0, a1, a2, _, _, _, _, _ = split_run(load_runs(x_rows, history_rows, p + RUN, length, WIDTH, HAS_HISTORY, RUNS))
    d0, d1, d2, d3, d4, d5, d6, d7 = split_run(
        as_runs(tl.load(dout_rows + p, mask=p < length, other=0.0).to(tl.float32), RUNS))
    e0, e1, e2, _, _, _, _, _ = split_run(  # the run after
        as_runs(tl.load(dout_rows + p + RUN, mask=p + RUN < length, other=0.0).to(tl.float32), RUNS))

    since_row = since_ptr + batch * length
    masked_tile = HAS_DOCUMENT_STARTS  # compile-time: False for rows of one sequence
    if HAS_DOCUMENT_STARTS and SKIP_FAR_TILES:
        masked_tile = document_starts_near(since_row, p, length, WIDTH)
    if masked_tile:
        n0, n1, n2, n3, n4, n5, n6, n7 = split_run(since_runs(since_row, rows, p, length, WIDTH, RUNS))
        na0, na1, na2, _, _, _, _, _ = split_run(since_runs(since_row, rows, p + RUN, length, WIDTH, RUNS))
        # g of the run after (its first three steps: only as they reach this run's inputs), then of this run;
        # hk_ is g as it reaches the input k steps back
        _, h1_a0, h2_a0, h3_a0 = document_output_grad(e0, a0, x7, x6, x5, na0, w_new, w_1, w_2, w_3, bias, SILU)
        _, _, h2_a1, h3_a1 = document_output_grad(e1, a1, a0, x7, x6, na1, w_new, w_1, w_2, w_3, bias, SILU)
        _, _, _, h3_a2 = document_output_grad(e2, a2, a1, a0, x7, na2, w_new, w_1, w_2, w_3, bias, SILU)
        g0, h1_0, h2_0, h3_0 = document_output_grad(d0, x0, b7, b6, b5, n0, w_new, w_1, w_2, w_3, bias, SILU)
        g1, h1_1, h2_1, h3_1 = document_output_grad(d1, x1, x0, b7, b6, n1, w_new, w_1, w_2, w_3, bias, SILU)
        g2, h1_2, h2_2, h3_2 = document_output_grad(d2, x2, x1, x0, b7, n2, w_new, w_1, w_2, w_3, bias, SILU)
        g3, h1_3, h2_3, h3_3 = document_output_grad(d3, x3, x2, x1, x0, n3, w_new, w_1, w_2, w_3, bias, SILU)
        g4, h1_4, h2_4, h3_4 = document_output_grad(d4, x4, x3, x2, x1, n4, w_new, w_1, w_2, w_3, bias, SILU)
        g5, h1_5, h2_5, h3_5 = document_output_grad(d5, x5, x4, x3, x2, n5, w_new, w_1, w_2, w_3, bias, SILU)
        g6, h1_6, h2_6, h3_6 = document_output_grad(d6, x6, x5, x4, x3, n6, w_new, w_1, w_2, w_3, bias, SILU)
        g7, h1_7, h2_7, h3_7 = document_output_grad(d7, x7, x6, x5, x4, n7, w_new, w_1, w_2, w_3, bias, SILU)
        dx = run_input_grads(g0, g1, g2, g3, g4, g5, g6, g7,
                             h1_1, h1_2, h1_3, h1_4, h1_5, h1_6, h1_7, h1_a0,
                             h2_2, h2_3, h2_4, h2_5, h2_6, h2_7, h2_a0, h2_a1,
                             h3_3, h3_4, h3_5, h3_6, h3_7, h3_a0, h3_a1, h3_a2, w_new, w_1, w_2, w_3)
        g = join_run(g0, g1, g2, g3, g4, g5, g6, g7)
        reach_1 = join_run(h1_0, h1_1, h1_2, h1_3, h1_4, h1_5, h1_6, h1_7)
        reach_2 = join_run(h2_0, h2_1, h2_2, h2_3, h2_4, h2_5, h2_6, h2_7)
        reach_3 = join_run(h3_0, h3_1, h3_2, h3_3, h3_4, h3_5, h3_6, h3_7)
    else:
        # g of the run after (its first three steps), then of this run; x_k columns as in the forward
        ga0 = output_grad(e0, a0, x7, x6, x5, w_new, w_1, w_2, w_3, bias, SILU)
        ga1 = output_grad(e1, a1, a0, x7, x6, w_new, w_1, w_2, w_3, bias, SILU)
        ga2 = output_grad(e2, a2, a1, a0, x7, w_new, w_1, w_2, w_3, bias, SILU)
        g0 = output_grad(d0, x0, b7, b6, b5, w_new, w_1, w_2, w_3, bias, SILU)
        g1 = output_grad(d1, x1, x0, b7, b6, w_new, w_1, w_2, w_3, bias, SILU)
        g2 = output_grad(d2, x2, x1, x0, b7, w_new, w_1, w_2, w_3, bias, SILU)
        g3 = output_grad(d3, x3, x2, x1, x0, w_new, w_1, w_2, w_3, bias, SILU)
        g4 = output_grad(d4, x4, x3, x2, x1, w_new, w_1, w_2, w_3, bias, SILU)
        g5 = output_grad(d5, x5, x4, x3, x2, w_new, w_1, w_2, w_3, bias, SILU)
        g6 = output_grad(d6, x6, x5, x4, x3, w_new, w_1, w_2, w_3, bias, SILU)
        g7 = output_grad(d7, x7, x6, x5, x4, w_new, w_1, w_2, w_3, bias, SILU)
        # every later gradient reaches its inputs unmasked
        dx = run_input_grads(g0, g1, g2, g3, g4, g5, g6, g7,
                             g1, g2, g3, g4, g5, g6, g7, ga0,
                             g2, g3, g4, g5, g6, g7, ga0, ga1,
                             g3, g4, g5, g6, g7, ga0, ga1, ga2, w_new, w_1, w_2, w_3)
        g = join_run(g0, g1, g2, g3, g4, g5, g6, g7)
        reach_1, reach_2, reach_3 = g, g, g
    dx_rows = dx_ptr + batch * dim * length + rows.to(tl.int64) * length
    tl.store(dx_rows + p, tl.reshape(dx, (BLOCK_D, RUNS * RUN)).to(dx_ptr.dtype.element_ty),
             mask=in_dim[:, None] & (p < length))

    # dw_k pairs each g[q] with the input k steps back; g is 0 past the sequence end (dout loads as 0 there)
    accumulate_filter_grads(dweight_ptr, dbias_ptr, channels, in_dim, g, reach_1, reach_2, reach_3,
                            join_run(b7, x0, x1, x2, x3, x4, x5, x6), join_run(b6, b7, x0, x1, x2, x3, x4, x5),
                            join_run(b5, b6, b7, x0, x1, x2, x3, x4), join_run(x0, x1, x2, x3, x4, x5, x6, x7),
                            WIDTH, HAS_BIAS)


def causal_conv1d_backward(
    dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool,
    history: torch.Tensor | None, document_since: torch.Tensor | None = None,
    skip_far_tiles: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward convolution; returns dx (x's dtype), dweight (dim, W) and dbias (dim,) in fp32.
    ``document_since`` as in ``causal_conv1d_forward``. ``skip_far_tiles``: tiles with no document start near
    them take the plain path (``document_starts_near``); False masks every tile, as the forward does (kept for
    timing the two: on an H200, when the kernels read start flags, the packed backward took 1.15-1.17x the
    unpacked one with it, 1.31-1.37x without; the forward gained nothing from the same branch,
    benchmarks/RESULTS.md)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    dx = torch.empty((batch, dim, length), device=x.device, dtype=x.dtype)
    dweight = torch.zeros((dim, width), device=x.device, dtype=torch.float32)
    dbias = torch.zeros((dim,), device=x.device, dtype=torch.float32) if bias is not None else None
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, CONV_BLOCK_D), triton.cdiv(length, CONV_RUNS * RUN))
    _causal_conv1d_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg,
        document_since if document_since is not None else x, dout, dx, dweight,
        dbias if dbias is not None else dweight,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        dout.stride(0), dout.stride(1),
        WIDTH=width, BLOCK_D=CONV_BLOCK_D, RUNS=CONV_RUNS,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        HAS_DOCUMENT_STARTS=document_since is not None, SKIP_FAR_TILES=skip_far_tiles,
        num_warps=CONV_NUM_WARPS,
    )
    return dx, dweight, dbias
