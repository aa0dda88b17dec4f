"""Packed rows through the conv kernels: the few values a document start changes, corrected after the tile code of
a row of one sequence has run.

In a packed row (``document_starts``) output t reads no input before its document's first step. That cuts the
window of the W-1 outputs from each start on (``conv_document_starts``: those with ``since[t] < W-1``) and
nothing else, so the conv kernels compute every tile as a row of one sequence, and then:

- forward, inside the kernel: the programs whose tile a start reaches rewrite its W-1 outputs from the start on,
  recomputed with their windows cut (``rewrite_cut_outputs``). A program learns how many starts reach its tile
  from one scalar load (``tile_start_count``); on the many tiles no start reaches, that and a branch are all a
  packed row adds, and the launcher caps the registers at the unpacked kernel's 32, so the forward keeps its
  occupancy. The rewrite follows a barrier, as the tile's own stores came from other threads.
- backward, one launch after the kernel (``conv_document_fixup_backward``): dx of the inputs from W-1 steps before
  each start to W-2 after it (the inputs an output with a cut window, or its gradient, reaches), recomputed whole
  with every output's masks; and the filter and bias gradients, to which the kernel added each of those
  outputs' uncut terms: each output's difference between its masked and its uncut terms is added once (the
  output counts for the start it follows, ``since[t] == t - s``). Inside the backward kernel that work had cost
  1.07-1.19x the unpacked time on an H200: a start's fix-up there is a chain of dependent loads run by
  16-channel programs holding the kernel's 72 registers; its own launch runs it over 64 channels at a time
  (benchmarks/RESULTS.md).

Masking every tile had cost the forward 1.09-1.19x and the backward up to 1.21x the unpacked time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_document_starts import ConvDocumentStarts
from .conv_runs import load_inputs
from .device_functions import silu, silu_grad

FORWARD_SPAN: tl.constexpr = tl.constexpr(4)  # steps rewritten after a start: at least W - 1 (W <= 4)
BACKWARD_SPAN: tl.constexpr = tl.constexpr(8)  # steps of dx around a start: at least 2W - 2
BACKWARD_BLOCK_C = 64  # channels per backward fix-up program
BACKWARD_SLOTS = 8  # backward fix-up programs per (row, channel block), each taking every BACKWARD_SLOTS-th start
BACKWARD_NUM_WARPS = 4


@triton.jit
def tile_entry(tile_starts_ptr):
    """This program's entry of ``tile_starts`` (the forward's grid (batch, channel blocks, tiles)): how many starts
    reach its tile, then the index of the first in the row's list."""
    return tile_starts_ptr + (tl.program_id(0) * tl.num_programs(2) + tl.program_id(2)) * 2


@triton.jit
def tile_start_count(tile_starts_ptr):
    """How many starts reach this program's tile. The forward reads it first, so that its latency passes while
    the tile loads, and keeps only it until its fix-up."""
    return tl.load(tile_entry(tile_starts_ptr))


@triton.jit
def fixup_rows(x_ptr, weight_ptr, bias_ptr, history_ptr, batch, first_channel, dim, stride_x_b, stride_x_d,
               stride_h_b, stride_h_d, BLOCK_C: tl.constexpr, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The fix-up's channels (BLOCK_C,) from ``first_channel``, clamped onto real ones as the kernels' are, and
    the mask of real ones; the (BLOCK_C, 1) row pointers of x, the conv state and the filter; and the bias as a
    (BLOCK_C, 1) fp32 column (zeros without one). In the forward these are built anew rather than taken from the
    tile's, whose layout is the (channels, 128 steps) tile's and not the fix-up's small one."""
    unclamped = first_channel + tl.arange(0, BLOCK_C)
    channels = tl.minimum(unclamped, dim - 1)
    rows = channels[:, None]
    bias = tl.zeros((BLOCK_C, 1), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows).to(tl.float32)
    return (channels, unclamped < dim, x_ptr + batch * stride_x_b + rows * stride_x_d,
            history_ptr + batch * stride_h_b + rows * stride_h_d, weight_ptr + rows * WIDTH, bias)


@triton.jit
def preactivations(x_rows, history_rows, weight_rows, bias, since_row, t, length, WIDTH: tl.constexpr,
                   HAS_HISTORY: tl.constexpr, BLOCK_C: tl.constexpr, SPAN: tl.constexpr):
    """At steps ``t`` (1, SPAN): the pre-activations (BLOCK_C, SPAN) as the conv kernels computed them (every tap)
    and as the documents have them (taps before the output's document dropped), and ``since`` (1, SPAN) int32
    (W-1 outside the row)."""
    since = tl.load(since_row + t, mask=(t >= 0) & (t < length), other=WIDTH - 1).to(tl.int32)
    uncut = tl.zeros((BLOCK_C, SPAN), tl.float32) + bias
    cut = uncut
    for k in tl.static_range(WIDTH):  # the tap that reads the input k steps back
        term = tl.load(weight_rows + WIDTH - 1 - k).to(tl.float32) * load_inputs(
            x_rows, history_rows, t - k, length, WIDTH, HAS_HISTORY)
        uncut += term
        cut += tl.where(since >= k, term, 0.0)
    return uncut, cut, since


@triton.jit
def rewrite_cut_outputs(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, positions_ptr, out_ptr, tile_starts_ptr, start_count,
    batch, first_channel, first_step, dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d,
    WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, STEPS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr,
):
    """The forward's fix-up of the tile of channels from ``first_channel`` and steps [first_step, first_step +
    STEPS), after the kernel stored it: rewrite its outputs whose window a start cuts, visiting the
    ``start_count`` starts that reach the tile from the row's list (``tile_start_count``)."""
    row = batch * length
    if start_count > 0:
        first = tl.load(tile_entry(tile_starts_ptr) + 1)
        tl.debug_barrier()  # the tile's stores of these outputs, by other threads, land before the rewrites
        channels, in_dim, x_rows, history_rows, weight_rows, bias = fixup_rows(
            x_ptr, weight_ptr, bias_ptr, history_ptr, batch, first_channel, dim, stride_x_b, stride_x_d, stride_h_b,
            stride_h_d, BLOCK_C, WIDTH, HAS_BIAS)
        out_rows = out_ptr + row * dim + channels[:, None].to(tl.int64) * length
        j = tl.arange(0, FORWARD_SPAN)[None, :]
        for index in range(first, first + start_count):
            t = tl.load(positions_ptr + row + index) + j
            _, cut, since = preactivations(x_rows, history_rows, weight_rows, bias, since_ptr + row, t, length, WIDTH,
                                           HAS_HISTORY, BLOCK_C, FORWARD_SPAN)
            if SILU:
                cut = silu(cut)
            in_tile = (t >= first_step) & (t < first_step + STEPS) & (t < length)
            follows_this_start = (j < WIDTH - 1) & (since == j) & in_tile
            tl.store(out_rows + t, cut.to(out_ptr.dtype.element_ty), mask=in_dim[:, None] & follows_this_start)


@triton.jit
def _conv_document_fixup_bwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, counts_ptr, positions_ptr, dout_ptr, dx_ptr, dweight_ptr,
    dbias_ptr, dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d, stride_dout_b, stride_dout_d,
    WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, SLOTS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr,
):
    """Grid (batch, channel blocks, SLOTS): a program takes one row, a block of channels and every SLOTS-th of the
    row's starts (a row's starts worked on side by side, so that the launch lasts about one start's few dependent
    loads). Layouts as in ``_causal_conv1d_bwd_kernel``, after it; since, counts and positions from
    ``conv_document_starts``. Rewrites dx from W-1 steps before each start to W-2 after it and adds to dweight
    and dbias the difference between the masked and the uncut terms of the W-1 outputs from each start on.
    Starts closer together than the span rewrite some dx values with the same numbers."""
    batch = tl.program_id(0).to(tl.int64)
    row = batch * length
    channels, in_dim, x_rows, history_rows, weight_rows, bias = fixup_rows(
        x_ptr, weight_ptr, bias_ptr, history_ptr, batch, tl.program_id(1) * BLOCK_C, dim, stride_x_b, stride_x_d,
        stride_h_b, stride_h_d, BLOCK_C, WIDTH, HAS_BIAS)
    dout_rows = dout_ptr + batch * stride_dout_b + channels[:, None] * stride_dout_d
    dx_rows = dx_ptr + row * dim + channels[:, None].to(tl.int64) * length
    since_row = since_ptr + row
    j = tl.arange(0, BACKWARD_SPAN)[None, :]
    for index in range(tl.program_id(2), tl.load(counts_ptr + batch), SLOTS):
        start = tl.load(positions_ptr + row + index)
        # dx[i] = sum_k w_k g[i + k] over the outputs i + k that read input i (since[i + k] >= k)
        i = start - (WIDTH - 1) + j
        dx = tl.zeros((BLOCK_C, BACKWARD_SPAN), tl.float32)
        for k in tl.static_range(WIDTH):
            _, cut, since = preactivations(x_rows, history_rows, weight_rows, bias, since_row, i + k, length, WIDTH,
                                           HAS_HISTORY, BLOCK_C, BACKWARD_SPAN)
            g = tl.load(dout_rows + i + k, mask=(i + k >= 0) & (i + k < length), other=0.0).to(tl.float32)
            if SILU:
                g = g * silu_grad(cut)
            dx += tl.load(weight_rows + WIDTH - 1 - k).to(tl.float32) * tl.where(since >= k, g, 0.0)
        tl.store(dx_rows + i, dx.to(dx_ptr.dtype.element_ty),
                 mask=in_dim[:, None] & (j < 2 * WIDTH - 2) & (i >= 0) & (i < length))

        # the filter and bias gradients of the outputs that follow this start
        t = start + j
        uncut, cut, since = preactivations(x_rows, history_rows, weight_rows, bias, since_row, t, length, WIDTH,
                                           HAS_HISTORY, BLOCK_C, BACKWARD_SPAN)
        dout = tl.load(dout_rows + t, mask=t < length, other=0.0).to(tl.float32)
        g_uncut, g_cut = dout, dout
        if SILU:
            g_uncut, g_cut = dout * silu_grad(uncut), dout * silu_grad(cut)
        follows_this_start = (j < WIDTH - 1) & (since == j) & (t < length)
        g_uncut = tl.where(follows_this_start, g_uncut, 0.0)
        g_cut = tl.where(follows_this_start, g_cut, 0.0)
        for k in tl.static_range(WIDTH):
            difference = (tl.where(since >= k, g_cut, 0.0) - g_uncut) * load_inputs(
                x_rows, history_rows, t - k, length, WIDTH, HAS_HISTORY)
            tl.atomic_add(dweight_ptr + channels * WIDTH + WIDTH - 1 - k, tl.sum(difference, axis=1), mask=in_dim,
                          sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + channels, tl.sum(g_cut - g_uncut, axis=1), mask=in_dim, sem="relaxed")


def conv_document_fixup_backward(
    dx: torch.Tensor, dweight: torch.Tensor, dbias: torch.Tensor | None, dout: torch.Tensor, x: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool, history: torch.Tensor | None,
    document: ConvDocumentStarts,
) -> None:
    """After ``causal_conv1d_backward`` on a packed row: correct its dx, dweight and dbias in place for the
    windows the document starts cut. Arguments as that launcher's and its results."""
    batch, dim, length = x.shape
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, BACKWARD_BLOCK_C), BACKWARD_SLOTS)
    _conv_document_fixup_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, document.since, document.start_counts,
        document.start_positions, dout, dx, dweight, dbias if dbias is not None else dweight,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        dout.stride(0), dout.stride(1),
        WIDTH=weight.shape[1], BLOCK_C=BACKWARD_BLOCK_C, SLOTS=BACKWARD_SLOTS,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        num_warps=BACKWARD_NUM_WARPS,
    )
