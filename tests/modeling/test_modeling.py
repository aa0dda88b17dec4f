"""Behaviour of AprielH1ForCausalLM on CPU with tiny random weights (reference kernels)."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralForCausalLM

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM

from .tiny import tiny_config, tiny_mistral_config


def _model(layer_types=None, seed: int = 0, **overrides) -> AprielH1ForCausalLM:
    torch.manual_seed(seed)
    return AprielH1ForCausalLM(tiny_config(layer_types, **overrides)).eval()


def test_all_attention_model_reproduces_mistral_logits():
    torch.manual_seed(0)
    mistral = MistralForCausalLM(tiny_mistral_config()).eval()
    hybrid = AprielH1ForCausalLM(AprielH1Config(**tiny_mistral_config().to_dict())).eval()
    hybrid.load_state_dict(mistral.state_dict(), strict=True)
    ids = torch.randint(3, 97, (2, 12))
    with torch.no_grad():
        assert torch.equal(hybrid(ids).logits, mistral(ids).logits)


def test_cached_greedy_generation_equals_recomputing_the_sequence():
    model = _model()
    prompt = torch.randint(3, 97, (1, 9))
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True,
            pad_token_id=0,
        )
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        full_logits = model(out.sequences).logits
    assert torch.equal(out.sequences, uncached)
    step_logits = torch.stack(out.logits, dim=1)  # (batch, new, vocab)
    recomputed = full_logits[:, prompt.shape[1] - 1 : -1]
    torch.testing.assert_close(step_logits, recomputed, rtol=1e-4, atol=1e-5)


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    model = _model()
    short, long = torch.randint(3, 97, (1, 5)), torch.randint(3, 97, (1, 9))
    padded = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], dim=1), torch.ones(1, 9)]).long()
    with torch.no_grad():
        batched = model.generate(
            padded, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
            return_dict_in_generate=True, output_logits=True,
        )
        alone_short = model.generate(
            short, max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
            output_logits=True,
        )
        alone_long = model.generate(long, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(batched.sequences[0, 9:], alone_short.sequences[0, 5:])
    assert torch.equal(batched.sequences[1], alone_long[0])
    torch.testing.assert_close(
        torch.stack(batched.logits, 1)[0], torch.stack(alone_short.logits, 1)[0], rtol=1e-4, atol=1e-5
    )


def test_padding_values_do_not_leak_into_the_mamba_layers():
    """Whatever token ids sit under the padding, the real tokens' logits are the same."""
    model = _model(["mamba", "mamba", "attention", "mamba"])
    real = torch.randint(3, 97, (1, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = model(torch.cat([torch.full((1, 3), 5), real], 1), attention_mask=mask).logits[:, 3:]
        b = model(torch.cat([torch.full((1, 3), 50), real], 1), attention_mask=mask).logits[:, 3:]
        alone = model(real).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a, alone, rtol=1e-4, atol=1e-5)


def test_mamba_recurrent_step_equals_parallel_forward():
    model = _model(["attention", "mamba", "mamba", "attention"])
    ids = torch.randint(3, 97, (2, 11))
    with torch.no_grad():
        parallel = model(ids).logits
        cache = None
        stepped = []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            stepped.append(out.logits)
    torch.testing.assert_close(torch.cat(stepped, 1), parallel, rtol=1e-4, atol=1e-5)


def test_prefill_in_two_chunks_continues_the_state():
    model = _model()
    ids = torch.randint(3, 97, (2, 14))
    with torch.no_grad():
        parallel = model(ids).logits
        first = model(ids[:, :6], use_cache=True)
        second = model(ids[:, 6:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), parallel, rtol=1e-4, atol=1e-5)


def test_cache_is_taken_under_either_name():
    """transformers 5.24 renamed ``past_key_values`` to ``cache``: both continue the same state, and both at once
    is an error rather than a silent choice."""
    model = _model()
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        parallel = model(ids).logits
        by_new_name = model(ids[:, 6:], cache=model(ids[:, :6], use_cache=True).past_key_values, use_cache=True).logits
        by_old_name = model(ids[:, 6:], past_key_values=model(ids[:, :6], use_cache=True).past_key_values, use_cache=True).logits
    torch.testing.assert_close(by_new_name, parallel[:, 6:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_old_name, by_new_name)
    cache = model(ids[:, :6], use_cache=True).past_key_values
    with pytest.raises(ValueError, match="once"):
        model(ids[:, 6:], cache=cache, past_key_values=cache)


def test_generation_continues_from_a_returned_cache():
    model = _model()
    prompt = torch.randint(3, 97, (1, 7))
    with torch.no_grad():
        whole = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        first = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
        rest = model.generate(
            first.sequences, past_key_values=first.past_key_values, max_new_tokens=6, do_sample=False,
            pad_token_id=0,
        )
    assert torch.equal(rest, whole)


def test_beam_search_with_cache_matches_beam_search_without():
    model = _model()
    prompt = torch.randint(3, 97, (2, 6))
    with torch.no_grad():
        cached = model.generate(prompt, num_beams=3, max_new_tokens=6, do_sample=False, pad_token_id=0)
        uncached = model.generate(
            prompt, num_beams=3, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=False
        )
    assert torch.equal(cached, uncached)


def test_sampling_is_reproducible_under_a_seed_and_stays_in_vocab():
    model = _model()
    prompt = torch.randint(3, 97, (2, 5))
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        with torch.no_grad():
            runs.append(model.generate(prompt, do_sample=True, top_k=20, max_new_tokens=7, pad_token_id=0))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (2, 12) and int(runs[0].max()) < 97


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    ids = torch.randint(3, 97, (2, 10))
    grads = []
    for checkpointing in (False, True):
        model = _model(seed=1).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("mixer" in name for name in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_bf16_forward_is_close_to_fp32():
    model = _model()
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        reference = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits.float()
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - reference).abs().max() < 0.05 * reference.abs().max()


def test_resize_token_embeddings_keeps_old_rows_and_runs():
    model = _model()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert torch.equal(model.get_input_embeddings().weight[:97], old)
    with torch.no_grad():
        assert model(torch.tensor([[110, 3, 4]])).logits.shape == (1, 3, 120)
