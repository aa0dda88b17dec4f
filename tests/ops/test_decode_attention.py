"""The Triton split-K decode attention against the PyTorch reference: random queries and caches, rows of
different live lengths (down to one key), GQA groups, and keys past each row's length that must not count.

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (see tests/ops/test_triton_kernels.py)."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1.ops.decode_attention import reference_decode_attention
from tests.ops.interpretable import DEVICE, INTERPRETED, ON_CUDA_OR_INTERPRETED

pytestmark = ON_CUDA_OR_INTERPRETED


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, q_heads, kv_heads, head_dim, max_len, splits", [
    (3, 8, 2, 32, 200, 3), (2, 4, 4, 16, 70, 1), (4, 32, 8, 128, 300, 5), (1, 32, 8, 128, 1000, 16),
])
def test_split_kernel_matches_the_reference(dtype, rows, q_heads, kv_heads, head_dim, max_len, splits):
    from modeling_apriel_h1.ops.triton_kernels.split_k_decode_attention import decode_attention

    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter multiplies bf16 tiles wrongly (tl.dot); bf16 is checked on the GPU")
    g = torch.Generator().manual_seed(rows * max_len)
    q = torch.randn(rows, q_heads, head_dim, generator=g).to(DEVICE, dtype)
    keys = torch.randn(rows + 1, max_len, kv_heads, head_dim, generator=g).to(DEVICE, dtype)
    values = torch.randn(rows + 1, max_len, kv_heads, head_dim, generator=g).to(DEVICE, dtype)
    lengths = torch.randint(1, max_len + 1, (rows,), generator=g).to(DEVICE)
    lengths[0] = 1
    keys[:, -1] = float("nan")  # a key past a row's length is never read (unless the row is full)
    values[:, -1] = float("nan")
    lengths.clamp_(max=max_len - 1)
    expected = reference_decode_attention(q.float(), keys.float(), values.float(), lengths, head_dim**-0.5)
    out = decode_attention(q, keys, values, lengths, head_dim**-0.5, splits)
    error = ((out.float() - expected).norm() / expected.norm()).item()
    assert error < (1e-4 if dtype == torch.float32 else 1e-2), error
