"""Continuing from a cache gives what one pass gives, whichever layer is Mamba (first, last, or between).

A Mamba layer's cache entry is a fixed-size state, so the number of tokens a cache holds is measured at an
attention layer; transformers' ``generate()`` asks ``Cache.get_seq_length()`` (layer 0) to cut the new tokens
from the full sequence, and the model's forward asks it for the positions of new tokens. Modelled on
transformers' common tests ``test_decoder_model_past_with_large_inputs``,
``test_generate_continue_from_past_key_values`` and ``test_generate_continue_from_inputs_embeds``: tokens
equal, scores equal up to fp32 rounding (a chunked prefill sums in another order than one pass).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.engine_generate import engine_generate

from .tiny import tiny_config

PATTERNS = {
    "mamba-first": ["mamba", "attention", "mamba", "attention"],
    "mamba-last": ["attention", "mamba", "attention", "mamba"],
    "mixed": ["attention", "mamba", "mamba", "attention"],
    "mamba-first-and-last": ["mamba", "mamba", "attention", "mamba"],
}
# the installed transformers' name for the cache argument and output field (``past_key_values`` before 5.24)
CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
GREEDY = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
SCORES = dict(return_dict_in_generate=True, output_scores=True)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=list(PATTERNS))
def model(request) -> AprielH1ForCausalLM:
    torch.manual_seed(0)
    return AprielH1ForCausalLM(tiny_config(PATTERNS[request.param])).eval()


def random_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(ids: torch.Tensor, padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``r`` gets ``padding[r]`` pad tokens (id 0) in front; returns the ids and their attention mask."""
    mask = torch.ones_like(ids)
    for row, count in enumerate(padding):
        mask[row, :count] = 0
    return ids.masked_fill(mask == 0, 0), mask


def caches(config) -> dict[str, object]:
    return {"dynamic": DynamicCache(config=config), "static": StaticCache(config=config, max_cache_len=32)}


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_every_cache_measures_its_length_at_an_attention_layer(model, kind):
    """Layer 0, which generate() asks, and the first attention layer both answer with the tokens seen: after a
    prefill, decoding steps and a second prefill on top."""
    cache = caches(model.config)[kind]
    length_layer = model.config.length_layer_index
    assert model.config.layer_types[length_layer] == "full_attention"
    ids = random_ids(2, 12, seed=1)
    seen = 0
    with torch.no_grad():
        for chunk in (ids[:, :5], ids[:, 5:6], ids[:, 6:7], ids[:, 7:]):
            model(chunk, use_cache=True, **{CACHE: cache})
            seen += chunk.shape[1]
            assert int(cache.get_seq_length()) == seen
            assert int(cache.get_seq_length(length_layer)) == seen


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_a_forward_on_top_of_a_cache_equals_one_forward(model, kind):
    """test_decoder_model_past_with_large_inputs: a left-padded prefix, then 3 tokens, then 1 token, each on top
    of the cache and without position ids, give the logits of one forward over the whole sequence."""
    ids, mask = left_padded(random_ids(2, 13, seed=2), [0, 3])
    cache = caches(model.config)[kind]
    with torch.no_grad():
        whole = model(ids, attention_mask=mask).logits
        parts = [
            model(ids[:, :end][:, start:], attention_mask=mask[:, :end], use_cache=True, **{CACHE: cache}).logits
            for start, end in ((0, 9), (9, 12), (12, 13))
        ]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, **TOLERANCE)


def test_generate_continues_from_a_returned_cache(model):
    """test_generate_continue_from_past_key_values: 3 tokens, then 5 more from the returned cache (the full
    sequence and its mask passed again), give one call's 8 tokens and scores; left-padded batch."""
    ids, mask = left_padded(random_ids(2, 7, seed=3), [2, 0])
    with torch.no_grad():
        once = model.generate(ids, attention_mask=mask, max_new_tokens=8, **GREEDY, **SCORES)
        first = model.generate(ids, attention_mask=mask, max_new_tokens=3, **GREEDY, **SCORES)
        grown_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)
        rest = model.generate(
            first.sequences, attention_mask=grown_mask, max_new_tokens=5, **GREEDY, **SCORES,
            **{CACHE: getattr(first, CACHE)},
        )
    assert torch.equal(rest.sequences, once.sequences)
    torch.testing.assert_close(torch.stack(first.scores + rest.scores, 1), torch.stack(once.scores, 1), **TOLERANCE)


def test_a_second_turn_from_the_returned_cache_equals_generating_on_the_whole_conversation(model):
    """Multi-turn chat: the first answer, then a new user message appended, continued from the cache, gives the
    tokens and scores of generating on the whole conversation from scratch."""
    prompt = random_ids(1, 6, seed=4)
    with torch.no_grad():
        first = model.generate(prompt, max_new_tokens=4, **GREEDY, **SCORES)
        conversation = torch.cat([first.sequences, random_ids(1, 5, seed=5)], dim=1)
        continued = model.generate(
            conversation, max_new_tokens=6, **GREEDY, **SCORES, **{CACHE: getattr(first, CACHE)}
        )
        fresh = model.generate(conversation, max_new_tokens=6, **GREEDY, **SCORES)
    assert torch.equal(continued.sequences, fresh.sequences)
    torch.testing.assert_close(torch.stack(continued.scores, 1), torch.stack(fresh.scores, 1), **TOLERANCE)


def test_generate_continues_from_inputs_embeds(model):
    """test_generate_continue_from_inputs_embeds: embeddings of the prompt, 3 tokens, then the embeddings of
    prompt + those tokens with the returned cache, 1 token more: one call's 4 tokens and scores."""
    embed = model.get_input_embeddings()
    with torch.no_grad():
        prompt_embeds = embed(random_ids(2, 6, seed=6))
        once = model.generate(inputs_embeds=prompt_embeds, max_new_tokens=4, **GREEDY, **SCORES)
        first = model.generate(inputs_embeds=prompt_embeds, max_new_tokens=3, **GREEDY, **SCORES)
        grown = torch.cat([prompt_embeds, embed(first.sequences)], dim=1)
        rest = model.generate(
            inputs_embeds=grown, max_new_tokens=1, **GREEDY, **SCORES, **{CACHE: getattr(first, CACHE)}
        )
    assert torch.equal(torch.cat([first.sequences, rest.sequences], dim=1), once.sequences)
    torch.testing.assert_close(torch.stack(first.scores + rest.scores, 1), torch.stack(once.scores, 1), **TOLERANCE)


def test_static_cache_generates_the_dynamic_cache_tokens_and_continues(model):
    """``cache_implementation="static"`` gives the dynamic cache's tokens and scores; a ``StaticCache`` passed to
    generate() and continued from (as a multi-turn chat keeps one) gives one call's tokens and scores."""
    ids, mask = left_padded(random_ids(2, 7, seed=7), [0, 2])
    with torch.no_grad():
        dynamic = model.generate(ids, attention_mask=mask, max_new_tokens=8, **GREEDY, **SCORES)
        static = model.generate(
            ids, attention_mask=mask, max_new_tokens=8, cache_implementation="static", **GREEDY, **SCORES
        )
        cache = StaticCache(config=model.config, max_cache_len=32)
        first = model.generate(ids, attention_mask=mask, max_new_tokens=3, **GREEDY, **SCORES, **{CACHE: cache})
        grown_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)
        rest = model.generate(
            first.sequences, attention_mask=grown_mask, max_new_tokens=5, **GREEDY, **SCORES, **{CACHE: cache}
        )
    for output in (static, rest):
        assert torch.equal(output.sequences, dynamic.sequences)
    torch.testing.assert_close(torch.stack(static.scores, 1), torch.stack(dynamic.scores, 1), **TOLERANCE)
    torch.testing.assert_close(torch.stack(first.scores + rest.scores, 1), torch.stack(dynamic.scores, 1), **TOLERANCE)


def test_the_decode_engine_continues_a_conversation_as_generate_does(model):
    """The engine prefills the whole conversation itself (it keeps no cache between calls): its tokens for a
    second turn equal generate()'s continued from the returned cache, through ``custom_generate`` (which takes
    the same arguments, cache included) and through ``generate_batch``; prompts shorter than the conv window
    included."""
    prompts = [random_ids(1, 2, seed=8), random_ids(1, 6, seed=9)]
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=64)
    conversations, expected = [], []
    with torch.no_grad():
        for prompt in prompts:
            first = model.generate(prompt, max_new_tokens=3, **GREEDY, return_dict_in_generate=True)
            conversation = torch.cat([first.sequences, random_ids(1, 4, seed=10)], dim=1)
            continued = model.generate(conversation, max_new_tokens=6, **GREEDY, **{CACHE: getattr(first, CACHE)})
            through_engine = model.generate(
                conversation, max_new_tokens=6, **GREEDY, custom_generate=engine_generate, decode_engine=engine,
                **{CACHE: getattr(first, CACHE)},
            )
            assert torch.equal(through_engine, continued)
            conversations.append(conversation[0].tolist())
            expected.append(continued[0, conversation.shape[1] :].tolist())
    assert engine.generate_batch(conversations, max_new_tokens=6) == expected
