"""The decode step's fused Triton kernels against the transformers modules they replace (RMSNorm with the
residual add before it, rotary embedding + KV-cache write, SiLU-gated activation).

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (fp32 only there: the interpreter's bf16 is unreliable)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.mistral.modeling_mistral import MistralRMSNorm, apply_rotary_pos_emb

from tests.ops.interpretable import DEVICE, DTYPES, ON_CUDA_OR_INTERPRETED

pytestmark = ON_CUDA_OR_INTERPRETED


def close(out: torch.Tensor, ref: torch.Tensor) -> None:
    tolerance = dict(rtol=1e-5, atol=1e-5) if out.dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), ref.float(), **tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_is_the_residual_add_then_rmsnorm(dtype, with_residual):
    from modeling_apriel_h1.ops.triton_kernels.decode_fused import add_rms_norm

    norm = MistralRMSNorm(320, eps=1e-5).to(DEVICE, dtype)
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    x = torch.randn(5, 320, device=DEVICE, dtype=dtype)
    residual = torch.randn(5, 320, device=DEVICE, dtype=dtype) if with_residual else None
    out, total = add_rms_norm(x, norm.weight, norm.variance_epsilon, residual)
    expected_total = x + residual if with_residual else x
    torch.testing.assert_close(total, expected_total, rtol=0, atol=0)
    close(out, norm(expected_total))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_to_cache_rotates_q_and_k_and_writes_k_and_v_at_each_position(dtype):
    from modeling_apriel_h1.ops.triton_kernels.decode_fused import rotary_to_cache

    rows, q_heads, kv_heads, head_dim, max_len = 3, 8, 2, 64, 20
    q = torch.randn(rows, q_heads * head_dim, device=DEVICE, dtype=dtype)
    k = torch.randn(rows, kv_heads * head_dim, device=DEVICE, dtype=dtype)
    v = torch.randn(rows, kv_heads * head_dim, device=DEVICE, dtype=dtype)
    angles = torch.rand(rows, head_dim // 2, device=DEVICE) * 6
    cos = torch.cat([angles.cos()] * 2, dim=-1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, dim=-1).to(dtype)
    positions = torch.tensor([0, 7, 19], device=DEVICE)
    k_cache = torch.zeros(rows + 1, max_len, kv_heads, head_dim, device=DEVICE, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    q_out = rotary_to_cache(q, k, v, cos, sin, positions, k_cache, v_cache, q_heads, head_dim)
    q_ref, k_ref = apply_rotary_pos_emb(
        q.view(rows, 1, q_heads, head_dim).transpose(1, 2), k.view(rows, 1, kv_heads, head_dim).transpose(1, 2),
        cos[:, None], sin[:, None],
    )
    close(q_out, q_ref[:, :, 0])
    rows_index = torch.arange(rows, device=DEVICE)
    close(k_cache[rows_index, positions], k_ref[:, :, 0])
    torch.testing.assert_close(v_cache[rows_index, positions], v.view(rows, kv_heads, head_dim), rtol=0, atol=0)
    written = torch.zeros(rows + 1, max_len, dtype=torch.bool)
    written[rows_index.cpu(), positions.cpu()] = True
    assert (k_cache[~written.to(DEVICE)] == 0).all() and (v_cache[~written.to(DEVICE)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_is_the_gated_activation(dtype):
    from modeling_apriel_h1.ops.triton_kernels.decode_fused import silu_mul

    gate = torch.randn(4, 3000, device=DEVICE, dtype=dtype) * 3
    up = torch.randn(4, 3000, device=DEVICE, dtype=dtype)
    close(silu_mul(gate, up), F.silu(gate) * up)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("head_dim", "rotary_dim", "qk_norm"), [(64, 64, True), (64, 48, False), (96, 72, True)])
def test_rotary_to_cache_with_qk_norms_and_partial_rotary_equals_the_modules(dtype, head_dim, rotary_dim, qk_norm):
    """Qwen3's per-head q/k RMSNorm before the rotation, Phi-4-mini's rotation of the first dims only, and a head
    width that is not a power of two (Phi-3-mini's 96): what the hybrid's attention modules compute."""
    from modeling_apriel_h1.modeling_apriel_h1 import apply_rotary_pos_emb as partial_rotary
    from modeling_apriel_h1.ops.triton_kernels.decode_fused import rotary_to_cache

    rows, q_heads, kv_heads, max_len = 3, 4, 2, 20
    q = torch.randn(rows, q_heads * head_dim, device=DEVICE, dtype=dtype)
    k = torch.randn(rows, kv_heads * head_dim, device=DEVICE, dtype=dtype)
    v = torch.randn(rows, kv_heads * head_dim, device=DEVICE, dtype=dtype)
    angles = torch.rand(rows, rotary_dim // 2, device=DEVICE) * 6
    cos = torch.cat([angles.cos()] * 2, dim=-1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, dim=-1).to(dtype)
    norms = [MistralRMSNorm(head_dim, eps=1e-6).to(DEVICE, dtype) for _ in range(2)]
    for norm in norms:
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    positions = torch.tensor([0, 7, 19], device=DEVICE)
    k_cache = torch.zeros(rows, max_len, kv_heads, head_dim, device=DEVICE, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    weights = (norms[0].weight, norms[1].weight, 1e-6) if qk_norm else ()
    q_out = rotary_to_cache(q, k, v, cos, sin, positions, k_cache, v_cache, q_heads, head_dim, *weights)
    q_in, k_in = q.view(rows, 1, q_heads, head_dim), k.view(rows, 1, kv_heads, head_dim)
    if qk_norm:
        q_in, k_in = norms[0](q_in), norms[1](k_in)
    q_ref, k_ref = partial_rotary(q_in.transpose(1, 2), k_in.transpose(1, 2), cos[:, None], sin[:, None])
    close(q_out, q_ref[:, :, 0])
    rows_index = torch.arange(rows, device=DEVICE)
    close(k_cache[rows_index, positions], k_ref[:, :, 0])
    torch.testing.assert_close(v_cache[rows_index, positions], v.view(rows, kv_heads, head_dim), rtol=0, atol=0)
