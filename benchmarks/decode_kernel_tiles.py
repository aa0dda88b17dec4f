"""Tiles of the decode engine's memory-bound kernels at Apriel-H1-15B's widths, swept on the GPU.

Why: both kernels are bound by bytes (a Mamba layer's fp32 state and conv window; an attention layer's live KV),
and how the work is cut into programs decides how close they get to the memory bandwidth. Prints GB/s of the
bytes each must move, each call timed as in ``kernel_speed.py``'s decode rows (CUDA graphs over input sets that
overflow the L2 cache):

- ``mamba-step``: ``mamba_decode_step`` for channels per program x warps at the serving batch sizes, beside the
  separate kernels it replaced (a widening copy of x, ``causal_conv1d_update``, ``selective_state_update``).
- ``attention-splits``: split-K decode attention for split counts at (rows, context) pairs, beside the count
  ``split_count`` picks.
- ``projections``: each of a decode step's weight GEMMs at the model's shape (Apriel-15B's by default), as ``F.linear`` (what the engine runs)
  beside two other ways of asking cuBLAS for the same product: the weight as the left operand (``W @ x^T``, the
  output then transposed back) and the rows padded to a multiple of 16; GB/s of the weight read.

    python benchmarks/decode_kernel_tiles.py --part mamba-step --batches 1 37 73
    python benchmarks/decode_kernel_tiles.py --part attention-splits
    python benchmarks/decode_kernel_tiles.py --part projections --batches 1 16 37 64 73
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from benchmarks.decode_throughput import add_model_dims
from benchmarks.kernel_speed import graph_ms_per_call, sets_to_overflow_l2
from modeling_apriel_h1.ops import triton_backend
from modeling_apriel_h1.ops.triton_kernels.mamba_decode_step import mamba_decode_step
from modeling_apriel_h1.ops.triton_kernels.split_k_decode_attention import decode_attention, split_count

ATTENTION_CASES = [(1, 2048), (15, 16384), (37, 16384), (73, 16384), (64, 8192), (16, 2048)]  # (rows, live keys)


def mamba_inputs(batch: int, args: argparse.Namespace) -> dict:
    d_inner, d_xb, n = args.d_inner, args.d_xb, args.d_state
    projected = torch.randn(batch, 2 * d_inner + 2 * d_xb, device="cuda", dtype=torch.bfloat16)
    z, x, B, C = projected.split([d_inner, d_xb, d_xb, d_inner], dim=-1)
    return dict(
        conv_state=torch.randn(batch, d_inner, 4, device="cuda", dtype=torch.bfloat16),
        ssm_state=torch.randn(batch, d_inner, n, device="cuda") * 0.1,
        x=x, z=z, dt=torch.randn(batch, d_inner, device="cuda", dtype=torch.bfloat16), A=-torch.rand(d_inner, n, device="cuda"),
        B=B, C=C, D=torch.randn(d_inner, device="cuda"), dt_bias=torch.randn(d_inner, device="cuda"),
        conv_weight=torch.randn(d_inner, 4, device="cuda", dtype=torch.bfloat16),
        conv_bias=torch.randn(d_inner, device="cuda", dtype=torch.bfloat16),
    )


def microseconds(call, input_sets: list[dict]) -> float:
    """Per call, over input sets run back to back in one CUDA graph: enough sets that they overflow the L2 cache
    (``kernel_speed.sets_to_overflow_l2``), so a state that would fit there is still read from memory."""
    return graph_ms_per_call(call, input_sets) * 1e3


def separate_kernels(t: dict, repeat: int, n: int) -> None:
    """The module path's three kernels: widen x, conv update, state update (B widened too, as ``step`` does)."""
    batch = t["x"].shape[0]

    def widen(tensor):
        return tensor.reshape(batch, -1, 1, n).expand(-1, -1, repeat, -1).reshape(batch, -1)

    x = triton_backend.causal_conv1d_update(widen(t["x"]), t["conv_state"], t["conv_weight"], t["conv_bias"], "silu")
    triton_backend.selective_state_update(
        t["ssm_state"], x, t["dt"], t["A"], widen(t["B"]).view(batch, -1, n), t["C"].reshape(batch, -1, n),
        t["D"], t["z"], t["dt_bias"], dt_softplus=True,
    )


def mamba_step_part(args: argparse.Namespace) -> None:
    repeat = args.d_inner // args.d_xb
    for batch in args.batches:
        moved = batch * args.d_inner * (args.d_state * 4 * 2 + 4 * 2 * 2)  # fp32 state and bf16 window, read + write
        input_sets = [mamba_inputs(batch, args) for _ in range(sets_to_overflow_l2(moved))]
        us = microseconds(lambda t: separate_kernels(t, repeat, args.d_state), input_sets)
        print(f"batch {batch:3d} separate kernels (widen x + conv + state update): {us:7.2f} us {moved / us / 1e3:7.0f} GB/s")
        for block_d, warps in itertools.product([16, 32, 64, 128], [1, 2, 4]):
            us = microseconds(lambda t: mamba_decode_step(**t, block_d=block_d, num_warps=warps), input_sets)
            print(f"batch {batch:3d} block_d {block_d:3d} warps {warps}: {us:7.2f} us {moved / us / 1e3:7.0f} GB/s",
                  flush=True)


def attention_splits_part(args: argparse.Namespace) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for rows, context in ATTENTION_CASES:
        max_len = context + 64
        moved = 2 * rows * context * args.kv_heads * args.head_dim * 2
        input_sets = []
        for _ in range(sets_to_overflow_l2(moved)):
            k_cache = torch.randn(rows, max_len, args.kv_heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
            input_sets.append(dict(q=torch.randn(rows, args.heads, args.head_dim, device="cuda", dtype=torch.bfloat16),
                                   k_cache=k_cache, v_cache=torch.randn_like(k_cache),
                                   lengths=torch.full((rows,), context, device="cuda")))
        chosen = split_count(rows, args.kv_heads, max_len, sms)
        for splits in sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, chosen}):
            us = microseconds(lambda t: decode_attention(**t, scale=0.088, num_splits=splits), input_sets)
            mark = "  <- split_count" if splits == chosen else ""
            print(f"rows {rows:3d} context {context:5d} splits {splits:2d}: {us:8.2f} us {moved / us / 1e3:7.0f} GB/s{mark}",
                  flush=True)
        del input_sets


def projection_shapes(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """Name -> (out_features, in_features) of every weight GEMM of a decode step, the packed groups as the engine
    runs them; projections of one shape are timed once, under their names joined."""
    hidden, attention_width, kv_width = args.hidden, args.heads * args.head_dim, args.kv_heads * args.head_dim
    dt_rank = -(-hidden // 16)  # mamba_dt_rank="auto", as decode_throughput builds its hybrids
    named = [
        ("q/k/v", (attention_width + 2 * kv_width, hidden)), ("o_proj", (hidden, attention_width)),
        ("gate/up", (2 * args.intermediate, hidden)), ("down", (hidden, args.intermediate)),
        ("in_proj+dt_in_proj", (2 * args.d_inner + 2 * args.d_xb + dt_rank, hidden)),
        ("out_proj", (hidden, args.d_inner)), ("dt_proj", (args.d_inner, dt_rank)),
    ]
    names_by_shape: dict[tuple[int, int], list[str]] = {}
    for name, shape in named:
        names_by_shape.setdefault(shape, []).append(name)
    return {" = ".join(names): shape for shape, names in names_by_shape.items()}


def projections_part(args: argparse.Namespace) -> None:
    for (name, (out_features, in_features)), rows in itertools.product(projection_shapes(args).items(), args.batches):
        weight_bytes = out_features * in_features * 2
        padded_rows = -(-rows // 16) * 16
        input_sets = [dict(x=torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16),
                           x_padded=torch.randn(padded_rows, in_features, device="cuda", dtype=torch.bfloat16),
                           weight=torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16))
                      for _ in range(sets_to_overflow_l2(weight_bytes))]
        ways = {
            "F.linear": lambda t: F.linear(t["x"], t["weight"]),
            "W @ x^T": lambda t: torch.mm(t["weight"], t["x"].t()).t(),
            "W @ x^T, contiguous": lambda t: torch.mm(t["weight"], t["x"].t()).t().contiguous(),
            f"F.linear, rows padded to {padded_rows}": lambda t: F.linear(t["x_padded"], t["weight"]),
        }
        for way, call in ways.items():
            us = microseconds(call, input_sets)
            print(f"{name:>18} rows {rows:3d} {way:>34}: {us:8.2f} us {weight_bytes / us / 1e3:7.0f} GB/s", flush=True)
        del input_sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["mamba-step", "attention-splits", "projections"], required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 37, 73])
    parser.add_argument("--d-inner", type=int, default=4096)
    parser.add_argument("--d-xb", type=int, default=1024)
    parser.add_argument("--d-state", type=int, default=16)
    add_model_dims(parser, layer_widths_only=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    parts = {"mamba-step": mamba_step_part, "attention-splits": attention_splits_part, "projections": projections_part}
    parts[args.part](args)


if __name__ == "__main__":
    main()
