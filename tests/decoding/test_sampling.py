"""The engine's sampling filters keep exactly the tokens transformers' own warpers keep."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from modeling_apriel_h1.engine.sampling import SamplingParams, choose_tokens, filter_logits


def kept(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_top_k_keeps_what_transformers_keeps(top_k):
    logits = torch.randn(6, 97, generator=torch.Generator().manual_seed(top_k)) * 3
    expected = TopKLogitsWarper(top_k)(None, logits.clone())
    assert torch.equal(kept(filter_logits(logits, top_k, None)), kept(expected))


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_what_transformers_keeps(top_p):
    logits = torch.randn(6, 97, generator=torch.Generator().manual_seed(int(top_p * 100))) * 3
    expected = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(kept(filter_logits(logits, 0, torch.tensor(top_p))), kept(expected))


def test_sampling_follows_the_filtered_distribution():
    """Draws from a 4-token distribution land on each token about as often as its probability says."""
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, -1).contiguous()
    params = SamplingParams(do_sample=True, top_p=0.8)  # keeps the 0.5 and 0.3 tokens
    draws = choose_tokens(logits, params, torch.tensor(1.0), torch.tensor(0.8))
    frequency = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert frequency[2:].sum() == 0
    assert torch.allclose(frequency[:2], torch.tensor([0.5, 0.3]) / 0.8, atol=0.02)


@pytest.mark.parametrize("options, message", [
    (dict(temperature=0), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"),
])
def test_invalid_sampling_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(do_sample=True, **options)
