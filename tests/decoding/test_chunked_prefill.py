"""Chunked prefill (CPU, fp32): a prompt prefilled chunk by chunk gives the tokens of one whole-prompt prefill,
whatever the chunk size against the conv width, while other sequences take decode steps between its chunks; the
pieces it is made of (the end-aligned causal attention, the Mamba mixer continuing from explicit states) equal
their specifications; bad sizes are refused with the fix."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import MistralForCausalLM

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.chunked_prefill import ChunkedPrefill, attend_chunk, attend_chunk_reference
from modeling_apriel_h1.engine.decoding import DecodeEngine
from tests.decoding.test_engine import generate_alone, prompts_of_lengths
from tests.modeling.tiny import tiny_config, tiny_mistral_config

NEW_TOKENS = 8
CONV_WIDTH = 4  # the tiny config's mamba_d_conv


SENSITIVE = dict(initializer_range=0.1)  # weights large enough that every layer's state moves the greedy tokens


# Qwen3's per-head q/k norms and Phi's partial rotary, which the chunk's attention projection must apply too
QK_NORM_PARTIAL_ROTARY = dict(
    attention_qk_norm=True, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
)


@pytest.fixture(scope="module", params=["hybrid", "mamba-first", "mistral", "qk-norm-partial-rotary"])
def model(request):
    torch.manual_seed(0)
    if request.param == "mistral":
        return MistralForCausalLM(tiny_mistral_config(**SENSITIVE)).eval()
    if request.param == "qk-norm-partial-rotary":
        return AprielH1ForCausalLM(tiny_config(**QK_NORM_PARTIAL_ROTARY, **SENSITIVE)).eval()
    layer_types = None if request.param == "hybrid" else ["mamba", "attention", "mamba", "mamba"]
    return AprielH1ForCausalLM(tiny_config(layer_types, **SENSITIVE)).eval()


def count_chunks(monkeypatch) -> list[tuple[int, int]]:
    """Record (start, length) of every chunk the engine prefills."""
    calls = []
    original = ChunkedPrefill.run

    def recording(self, slot, tokens, start, snapshot_at=None):
        calls.append((start, tokens.shape[0]))
        return original(self, slot, tokens, start, snapshot_at)

    monkeypatch.setattr(ChunkedPrefill, "run", recording)
    return calls


@pytest.mark.parametrize("chunk", [1, 3, CONV_WIDTH, 5, 22])
def test_a_prompt_prefilled_in_chunks_gives_the_whole_prompts_tokens(model, chunk, monkeypatch):
    """Chunks shorter than the conv window (1, 3), as long (4), not dividing the 23-token prompt (5, 22): the
    conv reads its window across chunk boundaries, the scan continues, attention sees the keys before."""
    chunks = count_chunks(monkeypatch)
    prompt = prompts_of_lengths(23, seed=3)[0]
    engine = DecodeEngine(model, max_batch_size=1, max_seq_len=64, prefill_chunk_size=chunk)
    assert engine.generate_batch([prompt], max_new_tokens=NEW_TOKENS) == [generate_alone(model, prompt, NEW_TOKENS)]
    assert chunks == [(start, min(chunk, 23 - start)) for start in range(0, 23, chunk)]


def test_a_prompt_within_one_chunk_is_prefilled_by_the_models_forward(monkeypatch):
    chunks = count_chunks(monkeypatch)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    prompts = prompts_of_lengths(23, 9)
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=64, prefill_chunk_size=23)
    assert engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS) == [generate_alone(model, p, NEW_TOKENS)
                                                                         for p in prompts]
    assert chunks == []


def test_other_sequences_decode_between_the_chunks_of_a_long_prompt(model, monkeypatch):
    """A 40-token prompt in slot 0, prefilled 6 tokens at a time, while a short prompt decodes in slot 1: decode
    steps (whose batch covers slot 0) run between its chunks, and both get their own greedy tokens."""
    events = []
    chunks = count_chunks(monkeypatch)
    long_prompt, short_prompt = prompts_of_lengths(40, 5, seed=4)
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=128, prefill_chunk_size=6)
    step = engine.run_step
    engine.run_step = lambda rows, params: (events.append(("step", rows, len(chunks))), step(rows, params))
    got = engine.generate_batch([long_prompt, short_prompt], max_new_tokens=64)
    assert got == [generate_alone(model, long_prompt, 64), generate_alone(model, short_prompt, 64)]
    steps_during_prefill = [rows for kind, rows, done in events if 0 < done < len(chunks)]
    chunks_followed_by_steps = {done for kind, rows, done in events if 0 < done < len(chunks)}
    assert len(chunks) == math.ceil(40 / 6)
    assert steps_during_prefill and set(steps_during_prefill) == {2}  # the step's rows include slot 0
    assert chunks_followed_by_steps == set(range(1, len(chunks)))  # after every chunk but the last


def test_chunked_prefill_and_the_fp32_state_it_leaves_match_the_whole_prompt():
    """The slot's KV and Mamba states after a chunked prefill equal those of the model's forward."""
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    prompt = prompts_of_lengths(17, seed=5)[0]
    whole = DecodeEngine(model, max_batch_size=1, max_seq_len=32)
    chunked = DecodeEngine(model, max_batch_size=1, max_seq_len=32, prefill_chunk_size=3)
    for engine in (whole, chunked):
        engine.generate_batch([prompt], max_new_tokens=1)
    for kind in ("conv", "ssm"):
        for index, tensor in getattr(whole.state, kind).items():
            torch.testing.assert_close(getattr(chunked.state, kind)[index], tensor, rtol=1e-5, atol=1e-6)
    for index, keys in whole.state.keys.items():
        torch.testing.assert_close(chunked.state.keys[index][:, :17], keys[:, :17], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked.state.values[index][:, :17], whole.state.values[index][:, :17],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length, total", [(1, 1), (1, 9), (5, 5), (5, 12), (12, 12)])
def test_attend_chunk_matches_its_reference(length, total):
    g = torch.Generator().manual_seed(length * 100 + total)
    query = torch.randn(1, 6, length, 8, generator=g)
    keys, values = torch.randn(2, 1, 2, total, 8, generator=g)
    torch.testing.assert_close(attend_chunk(query, keys, values, 0.3), attend_chunk_reference(query, keys, values, 0.3))


@pytest.mark.parametrize("pieces", [[1, 1, 1, 1, 1, 1, 1], [3, 4], [4, 3], [2, 5], [6, 1]])
def test_the_mamba_mixer_continues_from_the_states_it_returned(pieces):
    """``AprielH1Mamba.prefill`` over pieces, each from the previous piece's conv window and SSM state, equals
    one call over the whole sequence (reference kernels): output and final states."""
    torch.manual_seed(0)
    mixer = AprielH1ForCausalLM(tiny_config()).model.layers[1].mixer
    hidden = torch.randn(2, sum(pieces), 64)
    with torch.no_grad():
        whole, conv_whole, ssm_whole = mixer.prefill(hidden)
        outputs, conv, ssm, start = [], None, None, 0
        for length in pieces:
            out, conv, ssm = mixer.prefill(hidden[:, start : start + length], conv, ssm)
            outputs.append(out)
            start += length
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv, conv_whole)
    torch.testing.assert_close(ssm, ssm_whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(prefill_chunk_size=0), "prefill_chunk_size is 0; it must be a positive number"),
        (dict(prefill_chunk_size=-4), "prefill_chunk_size is -4; it must be a positive number"),
        (dict(prefix_cache_blocks=-1), "prefix_cache_blocks is -1"),
        (dict(prefix_block_size=0), "prefix_block_size is 0"),
    ],
)
def test_bad_sizes_are_refused_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        DecodeEngine(AprielH1ForCausalLM(tiny_config()).eval(), **options)


def test_a_prompt_longer_than_max_seq_len_is_refused_with_the_fix():
    engine = DecodeEngine(AprielH1ForCausalLM(tiny_config()).eval(), max_batch_size=1, max_seq_len=32,
                          prefill_chunk_size=8)
    with pytest.raises(ValueError, match=r"prompt 1 has 40 tokens; the engine's max_seq_len \(32\) must hold it.*"
                                         r"build the engine with max_seq_len >="):
        engine.generate_batch([[5] * 4, [5] * 40], max_new_tokens=2)


def test_prefill_alone_returns_the_first_token_and_leaves_the_slot_idle(model):
    prompt = prompts_of_lengths(19, seed=6)[0]
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=32, prefill_chunk_size=4)
    assert engine.prefill(prompt, slot=1) == generate_alone(model, prompt, 1)[0]
    assert int(engine.state.lengths[1]) == 19 and not engine.state.active.any()
    with pytest.raises(ValueError, match="slot 2 does not exist"):
        engine.prefill(prompt, slot=2)


def test_each_prompts_time_to_first_token_is_recorded():
    engine = DecodeEngine(AprielH1ForCausalLM(tiny_config()).eval(), max_batch_size=1, max_seq_len=64,
                          prefill_chunk_size=8)
    engine.generate_batch(prompts_of_lengths(20, 5, 9), max_new_tokens=3)
    first, second, third = engine.first_token_seconds
    assert 0 < first < second < third  # one slot: each prompt waits for the one before it


def test_short_prompts_and_a_long_prompts_chunks_take_turns(monkeypatch):
    """Slots keep freeing up for short prompts while a long one waits to be prefilled in chunks: its chunks still
    run between the short prompts' prefills instead of after all of them."""
    pieces = []
    chunks = count_chunks(monkeypatch)
    original = DecodeEngine._prefill
    monkeypatch.setattr(DecodeEngine, "_prefill", lambda self, slots, prompts, *rest: (
        pieces.append(("batch", len(chunks))), original(self, slots, prompts, *rest)))
    model = AprielH1ForCausalLM(tiny_config()).eval()
    prompts = prompts_of_lengths(30, *[6] * 8, seed=8)
    engine = DecodeEngine(model, max_batch_size=3, max_seq_len=64, prefill_chunk_size=8)
    assert engine.generate_batch(prompts, max_new_tokens=2) == [generate_alone(model, p, 2) for p in prompts]
    assert len(chunks) == 4 and len(pieces) == 8
    chunks_before_last_batch = pieces[-1][1]
    assert chunks_before_last_batch >= 3  # without turns, all four chunks would wait for the eight batches
