"""Packed rows keep documents apart: logits and gradients of a packed row equal those of its documents alone.

A row packs three conversations with ``position_ids`` restarting at 0 for each (transformers' convention) and no
attention mask. The hybrid student (attention and Mamba layers) and a Mistral teacher must then give every
document the logits it gets alone, and the gradients of any loss over the row must be the sum of the documents'
gradients. Random tiny models (synthetic weights and tokens), fp32, CPU (the PyTorch reference kernels).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import DynamicCache, MistralForCausalLM

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.modeling_apriel_h1 import _packed_document_starts

from .tiny import tiny_config, tiny_mistral_config

LENGTHS = [11, 23, 7]  # the Mamba conv is 4 wide: a 7-token document still has a full window inside it
ATTENTION = ["eager", "sdpa"]


def packed_row(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, total) token ids and position ids that restart at 0 at every document."""
    ids = torch.randint(3, 97, (1, sum(lengths)), generator=torch.Generator().manual_seed(seed))
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    return ids, positions


def spans(lengths: list[int]):
    start = 0
    for length in lengths:
        yield start, start + length
        start += length


def build(kind: str, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "student":
        return AprielH1ForCausalLM(tiny_config(attn_implementation=attention)).float()
    return MistralForCausalLM(tiny_mistral_config(attn_implementation=attention)).float()


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_packed_row_gives_each_document_its_own_logits_and_gradients(kind, attention):
    model = build(kind, attention)
    ids, positions = packed_row(LENGTHS)
    weights = torch.randn(1, ids.shape[1], model.config.vocab_size, generator=torch.Generator().manual_seed(1))

    packed_logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    (packed_logits * weights).sum().backward()
    packed_grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()

    for start, end in spans(LENGTHS):
        alone = model(input_ids=ids[:, start:end], use_cache=False).logits
        torch.testing.assert_close(packed_logits[:, start:end], alone, rtol=1e-5, atol=1e-5)
        (alone * weights[:, start:end]).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], param.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_documents_after_the_first_differ_without_the_restarting_positions():
    """The check above can fail: the same row with running positions is one long sequence, and its later
    documents' logits change (attention and the Mamba state read the earlier ones)."""
    model = build("student", "sdpa")
    ids, positions = packed_row(LENGTHS)
    packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    running = model(input_ids=ids, use_cache=False).logits
    first_end = LENGTHS[0]
    torch.testing.assert_close(packed[:, :first_end], running[:, :first_end])
    assert (packed[:, first_end:] - running[:, first_end:]).abs().max() > 1e-3


def test_only_restarting_positions_without_mask_or_cache_mark_document_starts():
    """Rows that are not packed keep the mixers' unpacked path (and mamba-ssm where installed); the condition
    is the one under which transformers' masks separate documents, so attention and Mamba layers agree."""
    _, positions = packed_row(LENGTHS)
    starts = _packed_document_starts(positions, 1, None, None)
    assert starts.tolist() == [[index in (11, 34) for index in range(sum(LENGTHS))]]
    assert _packed_document_starts(positions.expand(2, -1), 2, None, None).shape == (2, sum(LENGTHS))
    assert _packed_document_starts(torch.arange(41)[None], 1, None, None) is None
    assert _packed_document_starts(positions, 1, torch.ones(1, 41), None) is None
    assert _packed_document_starts(positions, 1, None, DynamicCache()) is None
    assert _packed_document_starts(None, 1, None, None) is None


GPU_BACKENDS = [
    pytest.param(backend, marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"no {package}"),
    ])
    for backend, package in (("triton", "triton"), ("mamba_ssm", "mamba_ssm"))
]
GPU_ATTENTION = ["sdpa", pytest.param("flash_attention_2", marks=pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None, reason="no flash-attn"))]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("attention", GPU_ATTENTION)
def test_packed_row_on_gpu_gives_each_document_its_own_logits_and_gradients(backend, attention, monkeypatch):
    """The same equality through the CUDA kernels in bf16 (packed rows run on our Triton kernels even when
    mamba-ssm is chosen), with documents long enough to span scan chunks and conv tiles."""
    monkeypatch.delenv("APRIEL_H1_KERNELS", raising=False)
    torch.manual_seed(0)
    config = tiny_config(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
        head_dim=32, mamba_d_state=16, max_position_embeddings=1024, kernel_backend=backend,
        attn_implementation=attention,
    )
    model = AprielH1ForCausalLM(config).to("cuda", torch.bfloat16).train()
    lengths = [300, 7, 129, 200]
    ids = torch.randint(3, 512, (1, sum(lengths)), device="cuda")
    positions = torch.cat([torch.arange(length) for length in lengths])[None].cuda()
    weights = torch.randn(1, sum(lengths), 512, device="cuda")

    packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
    (packed * weights).sum().backward()
    packed_grads = {name: p.grad.float().clone() for name, p in model.named_parameters()}
    model.zero_grad()
    for start, end in spans(lengths):
        alone = model(input_ids=ids[:, start:end], use_cache=False).logits.float()
        assert _relative_error(packed[:, start:end], alone) < 2e-2, (start, end)
        (alone * weights[:, start:end]).sum().backward()
    for name, param in model.named_parameters():
        assert _relative_error(packed_grads[name], param.grad.float()) < 3e-2, name


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-6))
