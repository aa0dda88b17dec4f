"""The whole model on a GPU: every fast kernel backend gives the reference's logits, gradients and generations.

Skipped without CUDA (CI has none); run on a GPU with ``pytest -m gpu tests/modeling``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton")),
    pytest.param(
        "mamba_ssm", marks=pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="no mamba-ssm")
    ),
]


def _model(backend: str, dtype: torch.dtype) -> AprielH1ForCausalLM:
    torch.manual_seed(0)
    config = AprielH1Config(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, layer_types=["mamba", "attention", "mamba", "mamba"], pad_token_id=0,
        kernel_backend=backend,
    )
    return AprielH1ForCausalLM(config).to("cuda", dtype)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
def test_logits_and_gradients_match_the_reference(backend, dtype, tolerance, monkeypatch):
    monkeypatch.delenv("APRIEL_H1_KERNELS", raising=False)
    ids = torch.randint(3, 512, (2, 300), device="cuda")
    results = {}
    for name in ("reference", backend):
        model = _model(name, dtype).train()
        loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        mixer = model.model.layers[0].mixer
        results[name] = (model(ids, use_cache=False).logits.detach(), mixer.in_proj.weight.grad, mixer.A_log.grad)
    for got, expected in zip(results[backend], results["reference"]):
        assert torch.isfinite(got).all()
        assert _relative_error(got, expected) < tolerance


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_generation_matches_the_reference_and_recomputation(backend, monkeypatch):
    monkeypatch.delenv("APRIEL_H1_KERNELS", raising=False)
    prompt = torch.randint(3, 512, (3, 40), device="cuda")
    mask = torch.ones_like(prompt)
    mask[0, :7] = 0  # a left-padded row
    outputs = {}
    for name in ("reference", backend):
        model = _model(name, torch.float32).eval()
        with torch.no_grad():
            outputs[name] = model.generate(
                prompt, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                return_dict_in_generate=True, output_logits=True,
            )
    fast, slow = outputs[backend], outputs["reference"]
    assert torch.equal(fast.sequences, slow.sequences)
    assert _relative_error(torch.stack(fast.logits), torch.stack(slow.logits)) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pieces", [[1, 2, 297], [3, 4, 293], [150, 150]])
def test_a_mixer_continued_from_its_states_matches_one_call(backend, pieces, monkeypatch):
    """Chunked prefill's Mamba half on each backend (mamba-ssm hands continued sequences to our Triton kernels):
    ``prefill`` over pieces, each from the states the previous one returned, gives the one-call result."""
    monkeypatch.delenv("APRIEL_H1_KERNELS", raising=False)
    mixer = _model(backend, torch.float32).model.layers[0].mixer
    hidden = torch.randn(2, sum(pieces), 256, device="cuda")
    with torch.no_grad():
        whole, _, ssm_whole = mixer.prefill(hidden)
        outputs, conv, ssm, start = [], None, None, 0
        for length in pieces:
            out, conv, ssm = mixer.prefill(hidden[:, start : start + length], conv, ssm)
            outputs.append(out)
            start += length
    assert _relative_error(torch.cat(outputs, dim=1), whole) < 1e-4
    assert _relative_error(ssm, ssm_whole) < 1e-4
