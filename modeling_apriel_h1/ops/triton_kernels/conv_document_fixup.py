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
  output counts for the start it follows, ``since[t] == t - s``). It loads each step around a start once per
  channel and reads every shift from registers. Its time goes to scattered DRAM reads (a few bytes of every
  channel's row around each start, evicted by the kernel before it): 1.05-1.11x the unpacked backward on an
  H200, and no less as a programmatic dependent launch overlapping the kernel's tail. Inside the backward
  kernel, where those reads would be cache hits, the same code raised the kernel's registers and cost the tiles
  no start reaches more (1.05-1.10x; benchmarks/RESULTS.md).

Masking every tile had cost the forward 1.09-1.19x and the backward up to 1.21x the unpacked time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_document_starts import SINCE_CLAMP, ConvDocumentStarts
from .conv_runs import filter_taps, load_inputs, output_grad
from .device_functions import silu, silu_grad

FORWARD_SPAN: tl.constexpr = tl.constexpr(4)  # steps rewritten after a start: at least W - 1 (W <= 4)
SINCE_CLAMP_STEPS: tl.constexpr = tl.constexpr(SINCE_CLAMP)  # the backward's columns are written for W <= 4
BACKWARD_BLOCK_C = 128  # channels per backward fix-up program
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
def since_at(since_row, q, length):
    """``since[q]`` as int32, q (1, 1); the clamp outside the row, where there is no output (its gradient is 0)."""
    return tl.load(since_row + q, mask=(q >= 0) & (q < length), other=SINCE_CLAMP_STEPS).to(tl.int32)


@triton.jit
def cut_output_grad(dout, x, x_1, x_2, x_3, since, w_new, w_1, w_2, w_3, bias, SILU: tl.constexpr):
    """g of one output whose document began ``since`` steps before it (SINCE_CLAMP_STEPS: none in its window):
    ``output_grad`` with the taps that would read the previous document dropped, its sum in the same order.
    ``x_k`` is the input k steps back."""
    if SILU:
        preactivation = (bias + w_new * x + tl.where(since >= 1, w_1 * x_1, 0.0) + tl.where(since >= 2, w_2 * x_2, 0.0)
                         + tl.where(since >= 3, w_3 * x_3, 0.0))
        return dout * silu_grad(preactivation)
    return dout


@triton.jit
def cut_input_grad(g, g_1, g_2, g_3, since_1, since_2, since_3, w_new, w_1, w_2, w_3):
    """dx of one input: ``g_k`` and ``since_k`` are those of the output k steps later, which reads it through the
    tap k steps back unless its window is cut there."""
    return (w_new * g + tl.where(since_1 >= 1, w_1 * g_1, 0.0) + tl.where(since_2 >= 2, w_2 * g_2, 0.0)
            + tl.where(since_3 >= 3, w_3 * g_3, 0.0))


@triton.jit
def store_dx(dx_rows, i, dx, in_dim, length, IN_SPAN: tl.constexpr):
    """Store the (BLOCK_C, 1) column of dx at step ``i`` if it is one that a start's cut windows change for this
    conv's width (IN_SPAN) and it lies in the row."""
    if IN_SPAN:
        tl.store(dx_rows + i, dx.to(dx_rows.dtype.element_ty), mask=in_dim & (i >= 0) & (i < length))


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
    Starts closer together than the span rewrite some dx values with the same numbers.

    Each step around a start is loaded once, as a (BLOCK_C, 1) column (names: ``m`` steps before the start, ``p``
    after it), and every shift is a choice of column: the inputs 6 before to 5 after (what the gradients of
    outputs 3 before to 5 after read), those outputs' gradients, and ``since`` of each as a scalar. Loading
    each shifted window as its own tile had made the fix-up bound by the L1 cache's scattered requests."""
    batch = tl.program_id(0).to(tl.int64)
    row = batch * length
    unclamped = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    in_dim = unclamped < dim
    channels = tl.minimum(unclamped, dim - 1)
    x_rows = x_ptr + batch * stride_x_b + channels * stride_x_d
    history_rows = history_ptr + batch * stride_h_b + channels * stride_h_d
    dout_rows = dout_ptr + batch * stride_dout_b + channels * stride_dout_d
    dx_rows = dx_ptr + row * dim + channels.to(tl.int64) * length
    since_row = since_ptr + row
    w_new, w_1, w_2, w_3, bias = filter_taps(weight_ptr, bias_ptr, tl.reshape(channels, (BLOCK_C,)), WIDTH, HAS_BIAS)
    for index in range(tl.program_id(2), tl.load(counts_ptr + batch), SLOTS):
        s = tl.load(positions_ptr + row + index) + tl.zeros((1, 1), tl.int32)  # a (1, 1) tensor: masks broadcast
        since_0 = tl.zeros((1, 1), tl.int32)  # s is a start
        x_m6 = load_inputs(x_rows, history_rows, s - 6, length, WIDTH, HAS_HISTORY)
        x_m5 = load_inputs(x_rows, history_rows, s - 5, length, WIDTH, HAS_HISTORY)
        x_m4 = load_inputs(x_rows, history_rows, s - 4, length, WIDTH, HAS_HISTORY)
        x_m3 = load_inputs(x_rows, history_rows, s - 3, length, WIDTH, HAS_HISTORY)
        x_m2 = load_inputs(x_rows, history_rows, s - 2, length, WIDTH, HAS_HISTORY)
        x_m1 = load_inputs(x_rows, history_rows, s - 1, length, WIDTH, HAS_HISTORY)
        x_0 = load_inputs(x_rows, history_rows, s, length, WIDTH, HAS_HISTORY)
        x_p1 = load_inputs(x_rows, history_rows, s + 1, length, WIDTH, HAS_HISTORY)
        x_p2 = load_inputs(x_rows, history_rows, s + 2, length, WIDTH, HAS_HISTORY)
        x_p3 = load_inputs(x_rows, history_rows, s + 3, length, WIDTH, HAS_HISTORY)
        x_p4 = load_inputs(x_rows, history_rows, s + 4, length, WIDTH, HAS_HISTORY)
        x_p5 = load_inputs(x_rows, history_rows, s + 5, length, WIDTH, HAS_HISTORY)
        d_m3 = load_inputs(dout_rows, dout_rows, s - 3, length, WIDTH, False)
        d_m2 = load_inputs(dout_rows, dout_rows, s - 2, length, WIDTH, False)
        d_m1 = load_inputs(dout_rows, dout_rows, s - 1, length, WIDTH, False)
        d_0 = load_inputs(dout_rows, dout_rows, s, length, WIDTH, False)
        d_p1 = load_inputs(dout_rows, dout_rows, s + 1, length, WIDTH, False)
        d_p2 = load_inputs(dout_rows, dout_rows, s + 2, length, WIDTH, False)
        d_p3 = load_inputs(dout_rows, dout_rows, s + 3, length, WIDTH, False)
        d_p4 = load_inputs(dout_rows, dout_rows, s + 4, length, WIDTH, False)
        d_p5 = load_inputs(dout_rows, dout_rows, s + 5, length, WIDTH, False)
        since_m3 = since_at(since_row, s - 3, length)
        since_m2 = since_at(since_row, s - 2, length)
        since_m1 = since_at(since_row, s - 1, length)
        since_p1 = since_at(since_row, s + 1, length)
        since_p2 = since_at(since_row, s + 2, length)
        since_p3 = since_at(since_row, s + 3, length)
        since_p4 = since_at(since_row, s + 4, length)
        since_p5 = since_at(since_row, s + 5, length)
        g_m3 = cut_output_grad(d_m3, x_m3, x_m4, x_m5, x_m6, since_m3, w_new, w_1, w_2, w_3, bias, SILU)
        g_m2 = cut_output_grad(d_m2, x_m2, x_m3, x_m4, x_m5, since_m2, w_new, w_1, w_2, w_3, bias, SILU)
        g_m1 = cut_output_grad(d_m1, x_m1, x_m2, x_m3, x_m4, since_m1, w_new, w_1, w_2, w_3, bias, SILU)
        g_0 = cut_output_grad(d_0, x_0, x_m1, x_m2, x_m3, since_0, w_new, w_1, w_2, w_3, bias, SILU)
        g_p1 = cut_output_grad(d_p1, x_p1, x_0, x_m1, x_m2, since_p1, w_new, w_1, w_2, w_3, bias, SILU)
        g_p2 = cut_output_grad(d_p2, x_p2, x_p1, x_0, x_m1, since_p2, w_new, w_1, w_2, w_3, bias, SILU)
        g_p3 = cut_output_grad(d_p3, x_p3, x_p2, x_p1, x_0, since_p3, w_new, w_1, w_2, w_3, bias, SILU)
        g_p4 = cut_output_grad(d_p4, x_p4, x_p3, x_p2, x_p1, since_p4, w_new, w_1, w_2, w_3, bias, SILU)
        g_p5 = cut_output_grad(d_p5, x_p5, x_p4, x_p3, x_p2, since_p5, w_new, w_1, w_2, w_3, bias, SILU)

        # the filter and bias gradients of the outputs s + e (e < W-1) that follow this start (since == e): the
        # kernel added their uncut terms u (its own ``output_grad``); their cut terms c keep the taps k <= e
        u_0 = output_grad(d_0, x_0, x_m1, x_m2, x_m3, w_new, w_1, w_2, w_3, bias, SILU)
        u_1 = output_grad(d_p1, x_p1, x_0, x_m1, x_m2, w_new, w_1, w_2, w_3, bias, SILU)
        u_2 = output_grad(d_p2, x_p2, x_p1, x_0, x_m1, w_new, w_1, w_2, w_3, bias, SILU)
        follows_1 = (since_p1 == 1) & (WIDTH > 2)
        follows_2 = (since_p2 == 2) & (WIDTH > 3)
        u_1 = tl.where(follows_1, u_1, 0.0)
        u_2 = tl.where(follows_2, u_2, 0.0)
        c_1 = tl.where(follows_1, g_p1, 0.0)
        c_2 = tl.where(follows_2, g_p2, 0.0)
        tap_rows = dweight_ptr + channels * WIDTH + WIDTH - 1  # the newest input's tap; older ones precede it
        tl.atomic_add(tap_rows, (g_0 - u_0) * x_0 + (c_1 - u_1) * x_p1 + (c_2 - u_2) * x_p2, mask=in_dim,
                      sem="relaxed")
        tl.atomic_add(tap_rows - 1, -u_0 * x_m1 + (c_1 - u_1) * x_0 + (c_2 - u_2) * x_p1, mask=in_dim,
                      sem="relaxed")
        if WIDTH >= 3:
            tl.atomic_add(tap_rows - 2, -u_0 * x_m2 - u_1 * x_m1 + (c_2 - u_2) * x_0, mask=in_dim, sem="relaxed")
        if WIDTH >= 4:
            tl.atomic_add(tap_rows - 3, -u_0 * x_m3 - u_1 * x_m2 - u_2 * x_m1, mask=in_dim, sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + channels, (g_0 + c_1 + c_2) - (u_0 + u_1 + u_2), mask=in_dim, sem="relaxed")

        # dx of the inputs s-(W-1) .. s+(W-2): every output that reads them, through the taps it keeps
        dx_m3 = cut_input_grad(g_m3, g_m2, g_m1, g_0, since_m2, since_m1, since_0, w_new, w_1, w_2, w_3)
        dx_m2 = cut_input_grad(g_m2, g_m1, g_0, g_p1, since_m1, since_0, since_p1, w_new, w_1, w_2, w_3)
        dx_m1 = cut_input_grad(g_m1, g_0, g_p1, g_p2, since_0, since_p1, since_p2, w_new, w_1, w_2, w_3)
        dx_0 = cut_input_grad(g_0, g_p1, g_p2, g_p3, since_p1, since_p2, since_p3, w_new, w_1, w_2, w_3)
        dx_p1 = cut_input_grad(g_p1, g_p2, g_p3, g_p4, since_p2, since_p3, since_p4, w_new, w_1, w_2, w_3)
        dx_p2 = cut_input_grad(g_p2, g_p3, g_p4, g_p5, since_p3, since_p4, since_p5, w_new, w_1, w_2, w_3)
        store_dx(dx_rows, s - 3, dx_m3, in_dim, length, WIDTH >= 4)
        store_dx(dx_rows, s - 2, dx_m2, in_dim, length, WIDTH >= 3)
        store_dx(dx_rows, s - 1, dx_m1, in_dim, length, True)
        store_dx(dx_rows, s, dx_0, in_dim, length, True)
        store_dx(dx_rows, s + 1, dx_p1, in_dim, length, WIDTH >= 3)
        store_dx(dx_rows, s + 2, dx_p2, in_dim, length, WIDTH >= 4)


def conv_document_fixup_backward(
    dx: torch.Tensor, dweight: torch.Tensor, dbias: torch.Tensor | None, dout: torch.Tensor, x: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool, history: torch.Tensor | None,
    document: ConvDocumentStarts,
) -> None:
    """After the backward kernel on a packed row (``causal_conv1d_backward`` launches both): correct its dx,
    dweight and dbias in place for the windows the document starts cut. Arguments as that launcher's and its
    results."""
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
