"""Forward depthwise causal convolution: ``out[d, t] = act(bias[d] + sum_k w[d, k] x[d, t - (W-1) + k])``.

Inputs before the sequence start come from the conv state (the last W inputs of the previous call), so a
continued prefill sees the same context as one long call. Tiles are (channels, runs, 8 steps) (``conv_runs``):
every input is loaded once with an aligned wide load, plus the run before each run for its first W-1 outputs.
Packed rows run the same tile code as rows of one sequence; the programs whose tile a document start reaches
then rewrite the outputs whose window it cuts (``conv_document_fixup``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv_document_fixup import rewrite_cut_outputs, tile_start_count
from .conv_document_starts import ConvDocumentStarts
from .conv_runs import RUN, TILE_STEPS, filter_taps, input_runs, join_run
from .device_functions import silu

CONV_BLOCK_D = 16  # channels per program
CONV_RUNS = TILE_STEPS // RUN.value  # runs of 8 steps per program
CONV_NUM_WARPS = 4
# The forward is bound by instruction issue at 32 registers, 16 programs per SM. A packed row's fix-up, rarely
# taken, would raise it to 36 (allocated as 40: 12 programs); capped, it spills one value to the stack and times
# 1.01-1.02x the unpacked kernel on an H200 against 1.06-1.08x uncapped (benchmarks/RESULTS.md).
PACKED_FORWARD_MAX_REGISTERS = 32


@triton.jit
def conv_output(x, x_1, x_2, x_3, w_new, w_1, w_2, w_3, bias, SILU: tl.constexpr):
    """One step of every (row, run): ``x`` is the input at t, ``x_k`` at t-k."""
    out = bias + w_new * x + w_1 * x_1 + w_2 * x_2 + w_3 * x_3
    if SILU:
        out = silu(out)
    return out


@triton.jit
def conv_tile(dim, BLOCK_D: tl.constexpr, RUNS: tl.constexpr):
    """This program's batch row, channels (BLOCK_D,) clamped onto real ones (the tail block's extra rows repeat
    the last channel; their stores are masked), the mask of real ones, and the (1, RUNS * 8) step positions."""
    batch = tl.program_id(0).to(tl.int64)
    unclamped = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    steps = tl.program_id(2) * RUNS * RUN + tl.arange(0, RUNS * RUN)
    return batch, tl.minimum(unclamped, dim - 1), unclamped < dim, steps[None, :]


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, tile_starts_ptr, positions_ptr, out_ptr,
    dim, length, stride_x_b, stride_x_d, stride_h_b, stride_h_d,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, RUNS: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_HISTORY: tl.constexpr, SILU: tl.constexpr, HAS_DOCUMENT_STARTS: tl.constexpr,
):
    """Grid (batch, dim blocks, time blocks of RUNS * 8 steps). x (batch, dim, L) unit time stride; weight
    (dim, WIDTH) contiguous; history (batch, dim, WIDTH) unit last stride; out (batch, dim, L) contiguous;
    since, tile_starts, positions: ``conv_document_starts`` (read only with HAS_DOCUMENT_STARTS)."""
    batch, channels, in_dim, p = conv_tile(dim, BLOCK_D, RUNS)
    if HAS_DOCUMENT_STARTS:  # issued first: its latency passes while the tile loads
        start_count = tile_start_count(tile_starts_ptr, False)
    rows = channels[:, None]  # (BLOCK_D, 1)
    x_rows = x_ptr + batch * stride_x_b + rows * stride_x_d
    history_rows = history_ptr + batch * stride_h_b + rows * stride_h_d
    w_new, w_1, w_2, w_3, bias = filter_taps(weight_ptr, bias_ptr, channels, WIDTH, HAS_BIAS)
    x0, x1, x2, x3, x4, x5, x6, x7, b5, b6, b7 = input_runs(x_rows, history_rows, p, length, WIDTH, HAS_HISTORY, RUNS)
    out = join_run(
        conv_output(x0, b7, b6, b5, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x1, x0, b7, b6, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x2, x1, x0, b7, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x3, x2, x1, x0, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x4, x3, x2, x1, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x5, x4, x3, x2, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x6, x5, x4, x3, w_new, w_1, w_2, w_3, bias, SILU),
        conv_output(x7, x6, x5, x4, w_new, w_1, w_2, w_3, bias, SILU),
    )
    out_rows = out_ptr + batch * dim * length + rows.to(tl.int64) * length
    tl.store(out_rows + p, tl.reshape(out, (BLOCK_D, RUNS * RUN)).to(out_ptr.dtype.element_ty),
             mask=in_dim[:, None] & (p < length))
    if HAS_DOCUMENT_STARTS:
        rewrite_cut_outputs(
            x_ptr, weight_ptr, bias_ptr, history_ptr, since_ptr, positions_ptr, out_ptr, tile_starts_ptr, start_count,
            batch, tl.program_id(1) * BLOCK_D, tl.program_id(2) * RUNS * RUN, dim, length, stride_x_b, stride_x_d,
            stride_h_b, stride_h_d, WIDTH, BLOCK_D, RUNS * RUN, HAS_BIAS, HAS_HISTORY, SILU)


def causal_conv1d_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_activation: bool,
    history: torch.Tensor | None, document: ConvDocumentStarts | None = None,
) -> torch.Tensor:
    """Launch the forward convolution; returns the output (batch, dim, L) in x's dtype. ``document``: a packed
    row's starts as ``conv_document_starts`` gives them (None: each row is one sequence)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.empty((batch, dim, length), device=x.device, dtype=x.dtype)
    history_arg = history if history is not None else x
    grid = (batch, triton.cdiv(dim, CONV_BLOCK_D), triton.cdiv(length, CONV_RUNS * RUN))
    since, tile_starts, positions = document[:3] if document is not None else (x, x, x)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, history_arg, since, tile_starts, positions, out,
        dim, length, x.stride(0), x.stride(1), history_arg.stride(0), history_arg.stride(1),
        WIDTH=width, BLOCK_D=CONV_BLOCK_D, RUNS=CONV_RUNS,
        HAS_BIAS=bias is not None, HAS_HISTORY=history is not None, SILU=silu_activation,
        HAS_DOCUMENT_STARTS=document is not None, num_warps=CONV_NUM_WARPS,
        maxnreg=PACKED_FORWARD_MAX_REGISTERS if document is not None else None,
    )
    return out
