"""Packed rows through the conv kernels: the few values a document start changes, computed apart from the tile code
of a row of one sequence.

In a packed row (``document_starts``) output t reads no input before its document's first step. That cuts the
window of the W-1 outputs from each start on (``conv_document_starts``: those with ``since[t] < W-1``) and
nothing else, so the conv kernels compute every tile as a row of one sequence, and then:

- forward, inside the kernel: the programs whose tile a start reaches rewrite its W-1 outputs from the start on,
  recomputed with their windows cut (``rewrite_cut_outputs``). A program learns how many starts reach its tile
  from one scalar load (``tile_start_count``); on the many tiles no start reaches, that and a branch are all a
  packed row adds, and the launcher caps the registers at the unpacked kernel's 32, so the forward keeps its
  occupancy. The rewrite follows a barrier, as the tile's own stores came from other threads.
- backward, one launch *before* the kernel (``conv_document_fixup_backward``): for each start, dx of the two
  aligned runs of 8 steps that hold the inputs from W-1 steps before it to W-2 after it (those an output with a
  cut window, or its gradient, reaches), recomputed whole with every output's masks; and the filter and bias
  gradients, to which the kernel adds each output's uncut terms: each cut output's difference between its
  masked and its uncut terms is added once (the output counts for the start it follows, ``since[t] == t - s``).
  The backward kernel stores no dx in those runs (``rewritten_by_fixup``, from its tile's second stretch of the
  start list), so the two launches write disjoint values and sum commuting atomics, and neither reads what the
  other writes. On Hopper and later the kernel is the fix-up's programmatic dependent and starts at once: the
  fix-up, a few programs bound by the latency of their scattered reads around each start, runs beside it on
  what the kernel leaves of each multiprocessor. After the kernel it had cost 1.05-1.11x the unpacked backward
  on an H200 (those reads miss every cache by then: about 1 us per start at 8 x 16k); beside it, 0.99-1.01x.
  Without a dependent launch it runs alone before the kernel, over more programs (BACKWARD_SLOTS_ALONE).
  Inside the backward kernel, where those reads would be cache hits, the correction raised the kernel's
  registers and cost the tiles no start reaches more (1.05-1.10x; benchmarks/RESULTS.md).

Masking every tile had cost the forward 1.09-1.19x and the backward up to 1.21x the unpacked time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_document_starts import REWRITE_RUNS, SINCE_CLAMP, ConvDocumentStarts
from .conv_runs import (
    RUN,
    as_runs,
    filter_taps,
    input_runs,
    join_run,
    load_inputs,
    load_runs,
    output_grad,
    split_run,
)
from .device_functions import silu, silu_grad

FORWARD_SPAN: tl.constexpr = tl.constexpr(4)  # steps rewritten after a start: at least W - 1 (W <= 4)
SINCE_CLAMP_STEPS: tl.constexpr = tl.constexpr(SINCE_CLAMP)  # the backward's masks are written for W <= 4
FIXUP_RUNS: tl.constexpr = tl.constexpr(REWRITE_RUNS)
BACKWARD_BLOCK_C = 64  # channels per backward fix-up program: one run per thread
BACKWARD_NUM_WARPS = 4
BACKWARD_SLOTS = 2  # backward fix-up programs per channel block, each taking every BACKWARD_SLOTS-th start of a row
BACKWARD_SLOTS_ALONE = 8  # the same when the fix-up runs alone (no dependent launch): nothing to hide it behind


def dependent_launch_supported(tensor: torch.Tensor) -> bool:
    """Whether kernels on this tensor's device can start while the launch before them runs (programmatic dependent
    launch: CUDA on compute capability 9.0 or later; the Triton interpreter runs on CPU tensors and has none)."""
    return tensor.is_cuda and torch.cuda.get_device_capability(tensor.device)[0] >= 9


@triton.jit
def tile_entry(tile_starts_ptr, BACKWARD: tl.constexpr):
    """This program's entry of ``tile_starts`` (the conv kernels' grid (batch, channel blocks, tiles)): how many
    starts concern its tile, then the index of the first in the row's list; the forward's pair or the backward's."""
    return tile_starts_ptr + (tl.program_id(0) * tl.num_programs(2) + tl.program_id(2)) * 4 + 2 * BACKWARD


@triton.jit
def tile_start_count(tile_starts_ptr, BACKWARD: tl.constexpr):
    """How many starts concern this program's tile. The kernels read it first, so that its latency passes while
    the tile loads, and keep only it until they need the starts."""
    return tl.load(tile_entry(tile_starts_ptr, BACKWARD))


@triton.jit
def rewritten_run_start(s, WIDTH: tl.constexpr):
    """The first step of the backward fix-up's runs for the start at step s >= 0: the aligned run holding
    s-(W-1) (``conv_document_starts.REWRITE_RUNS``)."""
    return ((s + RUN - (WIDTH - 1)) // RUN - 1) * RUN


@triton.jit
def rewritten_by_fixup(tile_starts_ptr, positions_ptr, row, start_count, p, WIDTH: tl.constexpr):
    """Which of the backward tile's steps ``p`` (1, steps) the fix-up rewrites: those in the runs of the
    ``start_count`` starts that concern the tile (``tile_start_count``)."""
    rewritten = p != p
    if start_count > 0:
        first = tl.load(tile_entry(tile_starts_ptr, True) + 1)
        for index in range(first, first + start_count):
            runs_start = rewritten_run_start(tl.load(positions_ptr + row + index), WIDTH)
            rewritten = rewritten | ((p >= runs_start) & (p < runs_start + FIXUP_RUNS * RUN))
    return rewritten


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
        first = tl.load(tile_entry(tile_starts_ptr, False) + 1)
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
def since_runs(since_row, p, length, RUNS: tl.constexpr):
    """``since`` at steps ``p`` (1, RUNS * 8) as (1, RUNS, 8) int32; the clamp outside the row, where there is no
    output (its gradient is 0)."""
    since = tl.load(since_row + p, mask=(p >= 0) & (p < length), other=SINCE_CLAMP_STEPS).to(tl.int32)
    return as_runs(since, RUNS)


@triton.jit
def cut_output_grad(dout, x, x_1, x_2, x_3, since, w_new, w_1, w_2, w_3, bias, SILU: tl.constexpr):
    """g of the outputs whose document began ``since`` steps before them (SINCE_CLAMP_STEPS: none in their
    window): ``output_grad`` with the taps that would read the previous document dropped, its sum in the same
    order. ``x_k`` are the inputs k steps back."""
    if SILU:
        preactivation = (bias + w_new * x + tl.where(since >= 1, w_1 * x_1, 0.0) + tl.where(since >= 2, w_2 * x_2, 0.0)
                         + tl.where(since >= 3, w_3 * x_3, 0.0))
        return dout * silu_grad(preactivation)
    return dout


@triton.jit
def cut_input_grad(g, g_1, g_2, g_3, since_1, since_2, since_3, w_new, w_1, w_2, w_3):
    """dx of inputs: ``g_k`` and ``since_k`` are those of the outputs k steps later, which read them through the
    tap k steps back unless their window is cut there."""
    return (w_new * g + tl.where(since_1 >= 1, w_1 * g_1, 0.0) + tl.where(since_2 >= 2, w_2 * g_2, 0.0)
            + tl.where(since_3 >= 3, w_3 * g_3, 0.0))


@triton.jit
def channel_sum(tile):
    """(channels, runs, 8) -> (channels,): a tile's sum over its steps."""
    return tl.sum(tl.sum(tile, axis=2), axis=1)


@triton.jit
def _conv_document_fixup_bwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, counts_ptr, positions_ptr, dout_ptr, dx_ptr, dweight_ptr,
    dbias_ptr, batch_size, dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d, stride_dout_b,
    stride_dout_d, WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, SLOTS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr, LAUNCH_DEPENDENTS: tl.constexpr,
):
    """Grid (channel blocks, SLOTS): a program takes a block of channels and, in every row, every SLOTS-th of its
    starts. Layouts as in ``_causal_conv1d_bwd_kernel``; since, counts and positions from
    ``conv_document_starts``. It reads nothing that kernel writes and writes only what that kernel leaves to it
    (dx of its runs, and sums added atomically), so it may run before or beside it. LAUNCH_DEPENDENTS: the
    backward kernel is launched as this launch's programmatic dependent, and may start at once.

    For each start s it recomputes, with every output's masks, dx of the two aligned runs of 8 steps that hold
    s-(W-1) .. s+(W-2) (the inputs a cut window or its gradient reaches), as the backward kernel computes a tile:
    whole runs per thread, each neighbour run's steps from a second aligned load, each shift a choice of register.
    So each channel's row is read in a few 16-byte pieces per start (loading every step around a start as its own
    column had cost a memory request per channel and step). Two starts in one run write its dx with the same
    numbers. To dweight and dbias, to which the kernel adds every output's uncut terms, it adds the difference
    between the masked and the uncut terms of the outputs this start cuts (those with ``since == t - s < W-1``,
    so each counts once), summed over the program's starts."""
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    unclamped = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_dim = unclamped < dim
    channels = tl.minimum(unclamped, dim - 1)
    rows = channels[:, None]
    w_new, w_1, w_2, w_3, bias = filter_taps(weight_ptr, bias_ptr, channels, WIDTH, HAS_BIAS)  # (BLOCK_C, 1)
    tile_w_new = w_new[:, :, None]  # the same as (BLOCK_C, 1, 1), for whole tiles
    tile_w_1 = w_1[:, :, None]
    tile_w_2 = w_2[:, :, None]
    tile_w_3 = w_3[:, :, None]
    tile_bias = bias[:, :, None]
    steps = tl.arange(0, FIXUP_RUNS * RUN)[None, :]
    dw_new = tl.zeros((BLOCK_C,), tl.float32)
    dw_1 = tl.zeros((BLOCK_C,), tl.float32)
    dw_2 = tl.zeros((BLOCK_C,), tl.float32)
    dw_3 = tl.zeros((BLOCK_C,), tl.float32)
    dbias = tl.zeros((BLOCK_C,), tl.float32)
    for row_index in range(batch_size):
        batch = tl.cast(row_index, tl.int64)
        row = batch * length
        x_rows = x_ptr + batch * stride_x_b + rows * stride_x_d
        history_rows = history_ptr + batch * stride_h_b + rows * stride_h_d
        dout_rows = dout_ptr + batch * stride_dout_b + rows * stride_dout_d
        dx_rows = dx_ptr + row * dim + rows.to(tl.int64) * length
        since_row = since_ptr + row
        for index in range(tl.program_id(1), tl.load(counts_ptr + batch), SLOTS):
            s = tl.load(positions_ptr + row + index)
            p = rewritten_run_start(s, WIDTH) + steps
            x0, x1, x2, x3, x4, x5, x6, x7, b5, b6, b7 = input_runs(x_rows, history_rows, p, length, WIDTH,
                                                                    HAS_HISTORY, FIXUP_RUNS)
            tile_x = join_run(x0, x1, x2, x3, x4, x5, x6, x7)
            a0, a1, a2, _, _, _, _, _ = split_run(load_runs(x_rows, history_rows, p + RUN, length, WIDTH, HAS_HISTORY,
                                                            FIXUP_RUNS))
            tile_dout = as_runs(tl.load(dout_rows + p, mask=(p >= 0) & (p < length), other=0.0).to(tl.float32),
                                FIXUP_RUNS)
            e0, e1, e2, _, _, _, _, _ = split_run(as_runs(
                tl.load(dout_rows + p + RUN, mask=(p + RUN >= 0) & (p + RUN < length), other=0.0).to(tl.float32),
                FIXUP_RUNS))
            tile_since = since_runs(since_row, p, length, FIXUP_RUNS)
            n0, n1, n2, n3, n4, n5, n6, n7 = split_run(tile_since)
            na0, na1, na2, _, _, _, _, _ = split_run(since_runs(since_row, p + RUN, length, FIXUP_RUNS))

            # the inputs 1, 2 and 3 steps back of each output in the tile
            back_1 = join_run(b7, x0, x1, x2, x3, x4, x5, x6)
            back_2 = join_run(b6, b7, x0, x1, x2, x3, x4, x5)
            back_3 = join_run(b5, b6, b7, x0, x1, x2, x3, x4)
            g = cut_output_grad(tile_dout, tile_x, back_1, back_2, back_3, tile_since, tile_w_new, tile_w_1, tile_w_2,
                                tile_w_3, tile_bias, SILU)
            g0, g1, g2, g3, g4, g5, g6, g7 = split_run(g)
            ga0 = cut_output_grad(e0, a0, x7, x6, x5, na0, w_new, w_1, w_2, w_3, bias, SILU)  # the run after's
            ga1 = cut_output_grad(e1, a1, a0, x7, x6, na1, w_new, w_1, w_2, w_3, bias, SILU)
            ga2 = cut_output_grad(e2, a2, a1, a0, x7, na2, w_new, w_1, w_2, w_3, bias, SILU)
            dx = cut_input_grad(
                g, join_run(g1, g2, g3, g4, g5, g6, g7, ga0), join_run(g2, g3, g4, g5, g6, g7, ga0, ga1),
                join_run(g3, g4, g5, g6, g7, ga0, ga1, ga2), join_run(n1, n2, n3, n4, n5, n6, n7, na0),
                join_run(n2, n3, n4, n5, n6, n7, na0, na1), join_run(n3, n4, n5, n6, n7, na0, na1, na2),
                tile_w_new, tile_w_1, tile_w_2, tile_w_3)
            tl.store(dx_rows + p, tl.reshape(dx, (BLOCK_C, FIXUP_RUNS * RUN)).to(dx_ptr.dtype.element_ty),
                     mask=in_dim[:, None] & (p >= 0) & (p < length))

            cut_here = (tile_since == as_runs(p - s, FIXUP_RUNS)) & (tile_since < WIDTH - 1)
            cut = tl.where(cut_here, g, 0.0)
            uncut = tl.where(cut_here, output_grad(tile_dout, tile_x, back_1, back_2, back_3, tile_w_new, tile_w_1,
                                                   tile_w_2, tile_w_3, tile_bias, SILU), 0.0)
            dw_new += channel_sum((cut - uncut) * tile_x)
            dw_1 += channel_sum((tl.where(tile_since >= 1, cut, 0.0) - uncut) * back_1)
            dw_2 += channel_sum((tl.where(tile_since >= 2, cut, 0.0) - uncut) * back_2)
            dw_3 += channel_sum((tl.where(tile_since >= 3, cut, 0.0) - uncut) * back_3)
            dbias += channel_sum(cut - uncut)

    tap_rows = dweight_ptr + channels * WIDTH + WIDTH - 1  # the newest input's tap; older ones precede it
    tl.atomic_add(tap_rows, dw_new, mask=in_dim, sem="relaxed")
    tl.atomic_add(tap_rows - 1, dw_1, mask=in_dim, sem="relaxed")
    if WIDTH >= 3:
        tl.atomic_add(tap_rows - 2, dw_2, mask=in_dim, sem="relaxed")
    if WIDTH >= 4:
        tl.atomic_add(tap_rows - 3, dw_3, mask=in_dim, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + channels, dbias, mask=in_dim, sem="relaxed")


def conv_document_fixup_backward(
    dx: torch.Tensor, dweight: torch.Tensor, dbias: torch.Tensor | None, dout: torch.Tensor, x: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool, history: torch.Tensor | None,
    document: ConvDocumentStarts, launch_dependents: bool,
) -> None:
    """The backward fix-up of a packed row (``causal_conv1d_backward`` launches it, then the kernel): dx of the
    runs around each start, and the filter and bias gradients' corrections, in place. Arguments as that
    launcher's and its results (dweight and dbias zeroed); ``launch_dependents``: the kernel follows as this
    launch's programmatic dependent."""
    batch, dim, length = x.shape
    history_arg = history if history is not None else x
    slots = BACKWARD_SLOTS if launch_dependents else BACKWARD_SLOTS_ALONE
    grid = (triton.cdiv(dim, BACKWARD_BLOCK_C), slots)
    _conv_document_fixup_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, document.since, document.start_counts,
        document.start_positions, dout, dx, dweight, dbias if dbias is not None else dweight,
        batch, dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        dout.stride(0), dout.stride(1),
        WIDTH=weight.shape[1], BLOCK_C=BACKWARD_BLOCK_C, SLOTS=slots,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        LAUNCH_DEPENDENTS=launch_dependents, num_warps=BACKWARD_NUM_WARPS,
    )
