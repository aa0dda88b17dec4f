"""Packed rows through the conv kernels: recompute only what a document start changes.

In a packed row (``document_starts``) output t reads no input before its document's first step. That cuts the
window of the W-1 outputs from each start on (``conv_document_starts``: those with ``since[t] < W-1``) and
nothing else, so the conv kernels run a packed row exactly as a row of one sequence (the same code, registers
and instructions: masking every tile had cost the forward 1.09-1.19x and the backward up to 1.21x the unpacked
time on an H200, benchmarks/RESULTS.md), and one small launch after each kernel corrects the few values those
outputs touch, visiting the starts from the row's compact list:

- forward: the W-1 outputs from each start on, recomputed with their windows cut at the start;
- backward: dx of the inputs from W-1 steps before each start to W-2 after it (the inputs an output with a cut
  window, or its gradient, reaches), recomputed whole with every output's masks; and the filter and bias
  gradients, to which the kernel added each of those outputs' uncut terms: each output's difference between its
  masked and its uncut terms is added once (the output counts for the start it follows, ``since[t] == t - s``).

A program takes one row, a block of channels and every SLOTS-th of the row's starts (the grid's third axis: a
row's starts are worked on side by side rather than one after the other, so that the launch lasts about one
start's few dependent loads); each start's work is a (channels, SPAN steps) tile around it. Starts closer
together than the tiles rewrite some dx values with the same numbers, whichever program writes last.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_document_starts import ConvDocumentStarts
from .conv_runs import load_inputs
from .device_functions import silu, silu_grad

FIXUP_BLOCK_C = 64  # channels per program
FIXUP_SPAN = 8  # steps of a start's tile: at least 2W - 2 (W <= 4, as in causal-conv1d)
FIXUP_SLOTS = 8  # programs per (row, channel block), each taking every FIXUP_SLOTS-th start of the row
FIXUP_NUM_WARPS = 4


@triton.jit
def fixup_program(x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, dim, length, stride_x_b, stride_x_d,
                  stride_h_b, stride_h_d, BLOCK_C: tl.constexpr, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """What both fix-ups start from: this program's batch row; its channels (BLOCK_C,) clamped onto real ones
    (the tail block's extra rows repeat the last channel; their writes are masked) and the mask of real ones;
    the (BLOCK_C, 1) row pointers of x, the conv state and the filter; the bias as a (BLOCK_C, 1) fp32 column
    (zeros without one); and the row's ``since``."""
    batch = tl.program_id(0).to(tl.int64)
    unclamped = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channels = tl.minimum(unclamped, dim - 1)
    rows = channels[:, None]
    bias = tl.zeros((BLOCK_C, 1), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows).to(tl.float32)
    return (batch, channels, unclamped < dim, x_ptr + batch * stride_x_b + rows * stride_x_d,
            history_ptr + batch * stride_h_b + rows * stride_h_d, weight_ptr + rows * WIDTH, bias,
            since_ptr + batch * length)


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
def _conv_document_fixup_fwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, counts_ptr, positions_ptr, out_ptr,
    dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d,
    WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, SPAN: tl.constexpr, SLOTS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr,
):
    """Grid (batch, channel blocks, SLOTS). Layouts as in ``_causal_conv1d_fwd_kernel``; since, counts and
    positions from ``conv_document_starts``. Rewrites out at the W-1 steps from each start on."""
    batch, channels, in_dim, x_rows, history_rows, weight_rows, bias, since_row = fixup_program(
        x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, dim, length, stride_x_b, stride_x_d, stride_h_b,
        stride_h_d, BLOCK_C, WIDTH, HAS_BIAS)
    out_rows = out_ptr + batch * dim * length + channels[:, None].to(tl.int64) * length
    j = tl.arange(0, SPAN)[None, :]
    for index in range(tl.program_id(2), tl.load(counts_ptr + batch), SLOTS):
        t = tl.load(positions_ptr + batch * length + index) + j
        _, cut, since = preactivations(x_rows, history_rows, weight_rows, bias, since_row, t, length, WIDTH,
                                       HAS_HISTORY, BLOCK_C, SPAN)
        if SILU:
            cut = silu(cut)
        follows_this_start = (j < WIDTH - 1) & (since == j) & (t < length)
        tl.store(out_rows + t, cut.to(out_ptr.dtype.element_ty), mask=in_dim[:, None] & follows_this_start)


@triton.jit
def _conv_document_fixup_bwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, counts_ptr, positions_ptr, dout_ptr, dx_ptr, dweight_ptr,
    dbias_ptr, dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d, stride_dout_b, stride_dout_d,
    WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, SPAN: tl.constexpr, SLOTS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr,
):
    """Grid (batch, channel blocks, SLOTS). Layouts as in ``_causal_conv1d_bwd_kernel``, after it: rewrites dx
    from W-1 steps before each start to W-2 after it and adds to dweight and dbias the difference between the
    masked and the uncut terms of the W-1 outputs from each start on."""
    batch, channels, in_dim, x_rows, history_rows, weight_rows, bias, since_row = fixup_program(
        x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, dim, length, stride_x_b, stride_x_d, stride_h_b,
        stride_h_d, BLOCK_C, WIDTH, HAS_BIAS)
    dout_rows = dout_ptr + batch * stride_dout_b + channels[:, None] * stride_dout_d
    dx_rows = dx_ptr + batch * dim * length + channels[:, None].to(tl.int64) * length
    j = tl.arange(0, SPAN)[None, :]
    for index in range(tl.program_id(2), tl.load(counts_ptr + batch), SLOTS):
        start = tl.load(positions_ptr + batch * length + index)
        # dx[i] = sum_k w_k g[i + k] over the outputs i + k that read input i (since[i + k] >= k)
        i = start - (WIDTH - 1) + j
        dx = tl.zeros((BLOCK_C, SPAN), tl.float32)
        for k in tl.static_range(WIDTH):
            _, cut, since = preactivations(x_rows, history_rows, weight_rows, bias, since_row, i + k, length, WIDTH,
                                           HAS_HISTORY, BLOCK_C, SPAN)
            g = tl.load(dout_rows + i + k, mask=(i + k >= 0) & (i + k < length), other=0.0).to(tl.float32)
            if SILU:
                g = g * silu_grad(cut)
            dx += tl.load(weight_rows + WIDTH - 1 - k).to(tl.float32) * tl.where(since >= k, g, 0.0)
        tl.store(dx_rows + i, dx.to(dx_ptr.dtype.element_ty),
                 mask=in_dim[:, None] & (j < 2 * WIDTH - 2) & (i >= 0) & (i < length))

        # the filter and bias gradients of the outputs that follow this start
        t = start + j
        uncut, cut, since = preactivations(x_rows, history_rows, weight_rows, bias, since_row, t, length, WIDTH,
                                           HAS_HISTORY, BLOCK_C, SPAN)
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


def conv_document_fixup_forward(
    out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool,
    history: torch.Tensor | None, document: ConvDocumentStarts,
) -> None:
    """After ``causal_conv1d_forward`` on a packed row: rewrite ``out`` in place where a document start cuts an
    output's window. Arguments as that launcher's (x with unit time stride, weight contiguous)."""
    batch, dim, length = x.shape
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, FIXUP_BLOCK_C), FIXUP_SLOTS)
    _conv_document_fixup_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, *document, out,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        WIDTH=weight.shape[1], BLOCK_C=FIXUP_BLOCK_C, SPAN=FIXUP_SPAN, SLOTS=FIXUP_SLOTS,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        num_warps=FIXUP_NUM_WARPS,
    )


def conv_document_fixup_backward(
    dx: torch.Tensor, dweight: torch.Tensor, dbias: torch.Tensor | None, dout: torch.Tensor, x: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool, history: torch.Tensor | None,
    document: ConvDocumentStarts,
) -> None:
    """After ``causal_conv1d_backward`` on a packed row: correct its dx, dweight and dbias in place for the
    windows the document starts cut. Arguments as that launcher's and its results."""
    batch, dim, length = x.shape
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, FIXUP_BLOCK_C), FIXUP_SLOTS)
    _conv_document_fixup_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, *document, dout, dx, dweight,
        dbias if dbias is not None else dweight,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        dout.stride(0), dout.stride(1),
        WIDTH=weight.shape[1], BLOCK_C=FIXUP_BLOCK_C, SPAN=FIXUP_SPAN, SLOTS=FIXUP_SLOTS,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        num_warps=FIXUP_NUM_WARPS,
    )
