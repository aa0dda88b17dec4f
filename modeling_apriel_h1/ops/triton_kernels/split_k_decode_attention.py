"""Attention of one new token per sequence over a preallocated KV cache, reading only each sequence's live length.

Split-K ("flash-decoding"): program (row, KV head, split) scores the query heads that share the KV head against
its share of the row's live keys with an online softmax, and a second kernel merges the splits. Each split's
range is computed from the row's length inside the kernel, so the grid is fixed (a CUDA graph can replay it) while
the bytes read follow the live lengths, not the buffer's size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # keys per inner step
NUM_WARPS = 4
LOG2_E = 1.4426950408889634


@triton.jit
def _decode_attention_split_kernel(
    q_ptr, k_ptr, v_ptr, lengths_ptr, acc_ptr, max_ptr, sum_ptr,
    scale_log2, num_splits,
    stride_q_b, stride_q_h, stride_k_b, stride_k_l, stride_k_h, stride_v_b, stride_v_l, stride_v_h,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (rows, KV heads, splits). q (rows, Hq, D); k, v (slots, L, Hkv, D) with unit stride over D; lengths
    (rows,) int: keys 0 .. length-1 are live. Writes per (row, head, split): acc (D,) fp32, running max and sum
    (log2 domain) for the merge."""
    row = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lengths_ptr + row).to(tl.int32)
    blocks_per_split = tl.cdiv(tl.cdiv(length, BLOCK_N), num_splits)
    start = split * blocks_per_split * BLOCK_N
    end = tl.minimum(start + blocks_per_split * BLOCK_N, length)

    group_rows = tl.arange(0, GROUP_PAD)
    is_head = group_rows < GROUP
    heads = kv_head * GROUP + group_rows
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + row * stride_q_b + heads[:, None] * stride_q_h + dims[None, :], mask=is_head[:, None], other=0.0)

    running_max = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    k_row = k_ptr + row * stride_k_b + kv_head * stride_k_h
    v_row = v_ptr + row * stride_v_b + kv_head * stride_v_h
    for block_start in range(start, end, BLOCK_N):
        keys = block_start + tl.arange(0, BLOCK_N)
        live = keys < end
        k = tl.load(k_row + keys[:, None] * stride_k_l + dims[None, :], mask=live[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2  # (GROUP_PAD, BLOCK_N)
        scores = tl.where(live[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        rescale = tl.exp2(running_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        v = tl.load(v_row + keys[:, None] * stride_v_l + dims[None, :], mask=live[:, None], other=0.0)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        running_max = new_max

    partial = (row * (GROUP * tl.num_programs(1)) + heads) * num_splits + split  # (GROUP_PAD,)
    tl.store(max_ptr + partial, running_max, mask=is_head)
    tl.store(sum_ptr + partial, running_sum, mask=is_head)
    tl.store(acc_ptr + partial[:, None] * HEAD_DIM + dims[None, :], acc, mask=is_head[:, None])


@triton.jit
def _merge_splits_kernel(
    acc_ptr, max_ptr, sum_ptr, out_ptr, num_splits,
    HEAD_DIM: tl.constexpr, SPLITS_POW2: tl.constexpr,
):
    """Grid (rows * Hq,). Merges the splits of one (row, head) into out (rows, Hq, D), contiguous."""
    head = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS_POW2)
    is_split = splits < num_splits
    dims = tl.arange(0, HEAD_DIM)
    base = head * num_splits
    split_max = tl.load(max_ptr + base + splits, mask=is_split, other=float("-inf"))
    split_sum = tl.load(sum_ptr + base + splits, mask=is_split, other=0.0)
    overall_max = tl.max(split_max, axis=0)
    weight = tl.where(split_sum > 0, tl.exp2(split_max - overall_max), 0.0)
    acc = tl.load(acc_ptr + (base + splits[:, None]) * HEAD_DIM + dims[None, :], mask=is_split[:, None], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(split_sum * weight, axis=0)
    tl.store(out_ptr + head * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


def split_count(rows: int, kv_heads: int, max_len: int, multiprocessors: int) -> int:
    """Splits per (row, KV head): at least eight programs per multiprocessor, never more than the buffer has blocks.

    Each program streams its keys start to end, so with few programs per multiprocessor the ones that get one
    more than the rest set the step's time (296 programs on 132 multiprocessors: the third round runs a quarter
    full); eight or more keep that tail small. At most 32: one row over 2k keys took 7.0 us with 32 splits and
    9.3 us with 64, the merge reading twice the partials (benchmarks/decode_kernel_tiles.py, H200)."""
    wanted = triton.cdiv(8 * multiprocessors, rows * kv_heads)
    return max(1, min(wanted, triton.cdiv(max_len, BLOCK_N), 32))


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    num_splits: int,
) -> torch.Tensor:
    """q (rows, Hq, D); k_cache, v_cache (>= rows, L, Hkv, D); lengths (rows,) live keys per row (>= 1).
    Returns (rows, Hq, D) in q's dtype. Launch-only (no host sync), so it can be captured in a CUDA graph."""
    rows, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    group = q_heads // kv_heads
    partial_acc = torch.empty((rows, q_heads, num_splits, head_dim), device=q.device, dtype=torch.float32)
    partial_max = torch.empty((rows, q_heads, num_splits), device=q.device, dtype=torch.float32)
    partial_sum = torch.empty_like(partial_max)
    _decode_attention_split_kernel[(rows, kv_heads, num_splits)](
        q, k_cache, v_cache, lengths, partial_acc, partial_max, partial_sum,
        scale * LOG2_E, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_N=BLOCK_N,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 caches stay exact (no tf32)
        num_warps=NUM_WARPS,
    )
    out = torch.empty((rows, q_heads, head_dim), device=q.device, dtype=q.dtype)
    _merge_splits_kernel[(rows * q_heads,)](
        partial_acc, partial_max, partial_sum, out, num_splits,
        HEAD_DIM=head_dim, SPLITS_POW2=triton.next_power_of_2(num_splits),
    )
    return out
