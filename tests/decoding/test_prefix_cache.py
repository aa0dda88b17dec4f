"""The decode engine's prefix cache (CPU, fp32): prompts that share a prefix resume from its cached blocks (KV +
Mamba snapshots) and get exactly the tokens of a prefill from scratch, also when the shared prefix ends inside a
block, when prefill chunks do not line up with blocks, and after a cached prefix was evicted; the pool's bytes
are what ``bytes_per_block`` counts."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralForCausalLM

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.chunked_prefill import ChunkedPrefill
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.prefix_cache import ROOT, PrefixCache, bytes_per_block
from tests.decoding.test_engine import generate_alone, prompts_of_lengths
from tests.modeling.tiny import tiny_config, tiny_mistral_config

NEW_TOKENS = 6
BLOCK = 8


SENSITIVE = dict(initializer_range=0.1)  # weights large enough that every layer's state moves the greedy tokens


@pytest.fixture(scope="module", params=["hybrid", "mamba-first", "mistral"])
def model(request):
    torch.manual_seed(0)
    if request.param == "mistral":
        return MistralForCausalLM(tiny_mistral_config(**SENSITIVE)).eval()
    layer_types = None if request.param == "hybrid" else ["mamba", "attention", "mamba", "mamba"]
    return AprielH1ForCausalLM(tiny_config(layer_types, **SENSITIVE)).eval()


def shared_prefix_prompts(prefix_length: int, suffix_lengths: list[int], seed: int = 7) -> list[list[int]]:
    prefix = prompts_of_lengths(prefix_length, seed=seed)[0]
    return [prefix + suffix for suffix in prompts_of_lengths(*suffix_lengths, seed=seed + 1)]


def prefilled_tokens(monkeypatch) -> list[int]:
    """Record how many prompt tokens every chunk actually computes."""
    computed = []
    original = ChunkedPrefill.run

    def recording(self, slot, tokens, start, snapshot_at=None):
        computed.append(tokens.shape[0])
        return original(self, slot, tokens, start, snapshot_at)

    monkeypatch.setattr(ChunkedPrefill, "run", recording)
    return computed


@pytest.mark.parametrize("chunk", [64, 5])
def test_prompts_sharing_a_prefix_that_ends_mid_block_reuse_its_whole_blocks(model, chunk, monkeypatch):
    """A 21-token shared prefix = 2 whole blocks of 8 + 5 tokens: later prompts resume at token 16. Chunks of 5
    cut blocks (and the conv window) at other places than the cache does."""
    computed = prefilled_tokens(monkeypatch)
    prompts = shared_prefix_prompts(21, [4, 9, 6])
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=64, prefill_chunk_size=chunk,
                          prefix_cache_blocks=16, prefix_block_size=BLOCK)
    assert engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS) == [
        generate_alone(model, p, NEW_TOKENS) for p in prompts]
    assert engine.prefix_cache.hits == 2 and engine.prefix_cache.hit_tokens == 2 * 16
    assert sum(computed) == sum(map(len, prompts)) - 2 * 16


def test_a_prefill_resumed_from_the_cache_leaves_the_state_of_a_prefill_from_scratch():
    """After a hit, the slot holds the KV and Mamba states (fp32) of a prefill without the cache."""
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config(**SENSITIVE)).eval()
    prompts = shared_prefix_prompts(19, [7, 5])
    cached = DecodeEngine(model, max_batch_size=1, max_seq_len=64, prefill_chunk_size=6, prefix_cache_blocks=8,
                          prefix_block_size=BLOCK)
    plain = DecodeEngine(model, max_batch_size=1, max_seq_len=64)
    cached.generate_batch(prompts, max_new_tokens=1)
    plain.generate_batch(prompts[1:], max_new_tokens=1)
    assert cached.prefix_cache.hit_tokens == 16
    close = dict(rtol=1e-4, atol=1e-5)
    for kind in ("conv", "ssm"):
        for index, tensor in getattr(plain.state, kind).items():
            torch.testing.assert_close(getattr(cached.state, kind)[index], tensor, **close)
    length = len(prompts[1])
    for index, keys in plain.state.keys.items():
        torch.testing.assert_close(cached.state.keys[index][:, :length], keys[:, :length], **close)
        torch.testing.assert_close(cached.state.values[index][:, :length], plain.state.values[index][:, :length],
                                   **close)


def test_a_repeated_prompt_recomputes_only_its_last_block(model):
    """A prompt of exactly 3 blocks asked twice: the second time blocks 1-2 are reused, and the last block is
    recomputed (its last token's logits choose the first new token)."""
    prompt = prompts_of_lengths(3 * BLOCK, seed=9)[0]
    engine = DecodeEngine(model, max_batch_size=1, max_seq_len=64, prefix_cache_blocks=8, prefix_block_size=BLOCK)
    first = engine.generate_batch([prompt], max_new_tokens=NEW_TOKENS)
    assert engine.generate_batch([prompt], max_new_tokens=NEW_TOKENS) == first == [generate_alone(model, prompt,
                                                                                                   NEW_TOKENS)]
    assert engine.prefix_cache.hit_tokens == 2 * BLOCK


def test_an_evicted_prefix_is_recomputed_and_gives_the_same_tokens(model):
    """Four blocks of room. Prompt A stores 3 blocks; prompt B (another prefix) stores 3, evicting A's last two
    (a chain loses its tail first: a block that another continues is kept); A asked again resumes after its
    first block, recomputes the rest and stores it again, evicting B's tail; every answer is exact."""
    a, b = prompts_of_lengths(3 * BLOCK + 2, 3 * BLOCK + 3, seed=11)
    engine = DecodeEngine(model, max_batch_size=1, max_seq_len=64, prefix_cache_blocks=4, prefix_block_size=BLOCK)
    expected = [generate_alone(model, p, NEW_TOKENS) for p in (a, b, a)]
    assert engine.generate_batch([a, b, a], max_new_tokens=NEW_TOKENS) == expected
    cache = engine.prefix_cache
    assert (cache.hits, cache.hit_tokens, cache.evictions, len(cache)) == (1, BLOCK, 4, 4)
    assert len(cache.lookup(a)) == 3 and len(cache.lookup(b)) == 1


def zero_block_cache(blocks: int) -> tuple[PrefixCache, dict, dict]:
    """An empty pool of ``blocks`` blocks of 2 tokens, and all-zero KV and Mamba snapshots of the tiny model to
    store in it (what the blocks hold does not matter to the pool's bookkeeping)."""
    model = AprielH1ForCausalLM(tiny_config()).eval()
    cache = PrefixCache(model, blocks=blocks, block_size=2)
    kv = {index: torch.zeros(2, 2, 16) for index in cache.keys}
    mamba = {index: (torch.zeros(1, *cache.conv[index].shape[1:]), torch.zeros(1, *cache.ssm[index].shape[1:]))
             for index in cache.conv}
    return cache, kv, mamba


def test_eviction_takes_the_least_recently_used_block_that_no_block_continues():
    cache, kv, mamba = zero_block_cache(blocks=3)
    first = cache.add(ROOT, [1, 2], kv, kv, mamba)
    second = cache.add(first, [3, 4], kv, kv, mamba)
    other = cache.add(ROOT, [9, 9], kv, kv, mamba)
    assert cache.lookup([1, 2, 3, 4, 5]) == [first, second]  # touches the chain: [9, 9] is now the oldest
    assert cache.add(ROOT, [7, 7], kv, kv, mamba) == other  # evicted: least recently used, continued by nothing
    assert cache.add(ROOT, [8, 8], kv, kv, mamba) == second  # the leaf of the chain goes before its first block
    assert cache.lookup([1, 2, 3, 4, 5]) == [first]
    assert cache.evictions == 2


def test_a_block_is_not_stored_when_every_block_is_needed_by_the_chain_being_written():
    cache, kv, mamba = zero_block_cache(blocks=1)
    first = cache.add(ROOT, [1, 2], kv, kv, mamba)
    assert cache.add(first, [3, 4], kv, kv, mamba) is None  # its parent may not be evicted to make room
    assert cache.lookup([1, 2, 3, 4, 5]) == [first]


def test_the_pool_takes_bytes_per_block_for_each_block_snapshots_included():
    model = AprielH1ForCausalLM(tiny_config()).eval()
    engine = DecodeEngine(model, max_batch_size=1, max_seq_len=32, prefix_cache_blocks=5, prefix_block_size=BLOCK)
    assert engine.prefix_cache.bytes() == 5 * bytes_per_block(model, BLOCK)
    snapshot = sum(t[0].numel() * t.element_size() for t in [*engine.prefix_cache.conv.values(),
                                                             *engine.prefix_cache.ssm.values()])
    kv = sum(t[0].numel() * t.element_size() for t in [*engine.prefix_cache.keys.values(),
                                                       *engine.prefix_cache.values.values()])
    assert snapshot > 0 and bytes_per_block(model, BLOCK) == kv + snapshot
    assert bytes_per_block(model, BLOCK, torch.bfloat16) < bytes_per_block(model, BLOCK)
