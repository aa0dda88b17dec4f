"""Backward depthwise causal convolution: gradients for x, weight and bias.

With ``pre[q] = bias + sum_k w_k x[q - (W-1) + k]`` and ``g = dout * act'(pre)``:

    dx[p] = sum_s w_{W-1-s} g[p + s],   dw_k = sum_q g[q] x[q - (W-1) + k],   dbias = sum_q g[q]

Tiles are (channels, runs, 8 steps) (``conv_runs``). g is computed once per step, plus the first W-1 steps of the
run after each run (which dx needs): 11 activation derivatives per 8 steps, where shifted windows would need 32.
The gradient of the conv state that preceded x is left to the caller (it touches only the first W-1 outputs).
Packed rows run this kernel as rows of one sequence, except that it leaves dx of the few runs around each
document start to a second launch (``conv_document_fixup``), which also corrects the filter and bias gradients.
That launch goes first and, on Hopper and later, this kernel is its programmatic dependent: the fix-up's few
scattered reads around each start (bound by their latency) overlap this kernel instead of following it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .causal_conv1d_fwd import CONV_BLOCK_D, CONV_NUM_WARPS, CONV_RUNS, conv_tile
from .conv_document_fixup import (
    conv_document_fixup_backward,
    dependent_launch_supported,
    rewritten_by_fixup,
    tile_start_count,
)
from .conv_document_starts import ConvDocumentStarts
from .conv_runs import RUN, as_runs, filter_taps, input_grad, input_runs, join_run, load_runs, output_grad, split_run


@triton.jit
def _causal_conv1d_bwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, tile_starts_ptr, positions_ptr, dout_ptr, dx_ptr, dweight_ptr,
    dbias_ptr, dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d, stride_dout_b, stride_dout_d,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, RUNS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr, HAS_DOCUMENT_STARTS: tl.constexpr,
    AFTER_FIXUP: tl.constexpr,
):
    """Grid (batch, dim blocks, time blocks of RUNS * 8 steps). dx (batch, dim, L) contiguous in x's dtype;
    dweight (dim, WIDTH) and dbias (dim,) fp32, zeroed, accumulated atomically over batch rows and time blocks.
    tile_starts, positions: ``conv_document_starts`` (read only with HAS_DOCUMENT_STARTS: dx of the fix-up's runs
    is not stored). AFTER_FIXUP: launched as the fix-up's programmatic dependent; one program waits for it at its
    end, so that this kernel does not end before the fix-up and what runs after it finds the fix-up's results
    too. (Every program waiting had held the first wave's programs until the fix-up finished.)"""
    batch, channels, in_dim, p = conv_tile(dim, BLOCK_D, RUNS)
    if HAS_DOCUMENT_STARTS:  # issued first: its latency passes while the tile loads
        start_count = tile_start_count(tile_starts_ptr, True)
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
    dx = join_run(
        input_grad(g0, g1, g2, g3, w_new, w_1, w_2, w_3),
        input_grad(g1, g2, g3, g4, w_new, w_1, w_2, w_3),
        input_grad(g2, g3, g4, g5, w_new, w_1, w_2, w_3),
        input_grad(g3, g4, g5, g6, w_new, w_1, w_2, w_3),
        input_grad(g4, g5, g6, g7, w_new, w_1, w_2, w_3),
        input_grad(g5, g6, g7, ga0, w_new, w_1, w_2, w_3),
        input_grad(g6, g7, ga0, ga1, w_new, w_1, w_2, w_3),
        input_grad(g7, ga0, ga1, ga2, w_new, w_1, w_2, w_3),
    )
    dx_rows = dx_ptr + batch * dim * length + rows.to(tl.int64) * length
    stored = p < length
    if HAS_DOCUMENT_STARTS:
        stored = stored & ~rewritten_by_fixup(tile_starts_ptr, positions_ptr, batch * length, start_count, p, WIDTH)
    tl.store(dx_rows + p, tl.reshape(dx, (BLOCK_D, RUNS * RUN)).to(dx_ptr.dtype.element_ty),
             mask=in_dim[:, None] & stored)

    # dw_k pairs each g[q] with the input k steps back; g is 0 past the sequence end (dout loads as 0 there)
    g = join_run(g0, g1, g2, g3, g4, g5, g6, g7)
    tap_rows = dweight_ptr + channels * WIDTH + WIDTH - 1  # the newest input's tap; older ones precede it
    tl.atomic_add(tap_rows, tl.sum(tl.sum(g * join_run(x0, x1, x2, x3, x4, x5, x6, x7), axis=2), axis=1),
                  mask=in_dim, sem="relaxed")
    tl.atomic_add(tap_rows - 1, tl.sum(tl.sum(g * join_run(b7, x0, x1, x2, x3, x4, x5, x6), axis=2), axis=1),
                  mask=in_dim, sem="relaxed")
    if WIDTH >= 3:
        tl.atomic_add(tap_rows - 2, tl.sum(tl.sum(g * join_run(b6, b7, x0, x1, x2, x3, x4, x5), axis=2), axis=1),
                      mask=in_dim, sem="relaxed")
    if WIDTH >= 4:
        tl.atomic_add(tap_rows - 3, tl.sum(tl.sum(g * join_run(b5, b6, b7, x0, x1, x2, x3, x4), axis=2), axis=1),
                      mask=in_dim, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + channels, tl.sum(tl.sum(g, axis=2), axis=1), mask=in_dim, sem="relaxed")
    if AFTER_FIXUP:
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0) & (tl.program_id(2) == tl.num_programs(2) - 1):
            tl.extra.cuda.gdc_wait()  # one of the last programs to start; returns at once unless the fix-up runs


def causal_conv1d_backward(
    dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool,
    history: torch.Tensor | None, document: ConvDocumentStarts | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward convolution, after its fix-up on a packed row (``document``, as in the forward);
    returns dx (x's dtype), dweight (dim, W) and dbias (dim,) in fp32."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    dx = torch.empty((batch, dim, length), device=x.device, dtype=x.dtype)
    dweight = torch.zeros((dim, width), device=x.device, dtype=torch.float32)
    dbias = torch.zeros((dim,), device=x.device, dtype=torch.float32) if bias is not None else None
    history_arg = history if history is not None else x
    dependent = document is not None and dependent_launch_supported(x)
    if document is not None:
        conv_document_fixup_backward(dx, dweight, dbias, dout, x, weight, bias, silu_activation, history, document,
                                     launch_dependents=dependent)
    _, tile_starts, positions, _ = document if document is not None else (x, x, x, x)
    grid = (batch, triton.cdiv(dim, CONV_BLOCK_D), triton.cdiv(length, CONV_RUNS * RUN))
    _causal_conv1d_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, tile_starts, positions, dout, dx, dweight,
        dbias if dbias is not None else dweight,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        dout.stride(0), dout.stride(1),
        WIDTH=width, BLOCK_D=CONV_BLOCK_D, RUNS=CONV_RUNS,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        HAS_DOCUMENT_STARTS=document is not None, AFTER_FIXUP=dependent, num_warps=CONV_NUM_WARPS,
        launch_pdl=dependent,
    )
    return dx, dweight, dbias
