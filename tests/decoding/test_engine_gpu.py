"""The decode engine on a GPU: CUDA-graph replays give the eager step's tokens, reused slots keep no state of
their last request, the engine agrees with generate(), and stock static-cache generate equals the dynamic one."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.sampling import SamplingParams
from tests.modeling.tiny import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# small, but with the real model's head size and power-of-two state so every Triton kernel runs
WIDTHS = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              vocab_size=1000, mamba_d_state=16)
LAYERS = ["attention", "mamba", "mamba", "attention", "mamba", "mamba"]


def make_model(dtype: torch.dtype) -> AprielH1ForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(LAYERS, num_hidden_layers=len(LAYERS), **WIDTHS)
    return AprielH1ForCausalLM(config).to("cuda", dtype).eval()


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (int(n),), generator=g).tolist() for n in torch.randint(3, 40, (count,), generator=g)]


def test_graph_replays_give_the_eager_steps_tokens():
    model = make_model(torch.bfloat16)
    batch = prompts(6)
    graphs = DecodeEngine(model, max_batch_size=4, max_seq_len=128).generate_batch(batch, max_new_tokens=48)
    eager = DecodeEngine(model, max_batch_size=4, max_seq_len=128, cuda_graphs=False).generate_batch(
        batch, max_new_tokens=48)
    assert graphs == eager


def test_reused_slots_carry_nothing_over():
    """Each of eight prompts decoded through two slots equals the same prompt decoded alone in a fresh engine."""
    model = make_model(torch.bfloat16)
    batch = prompts(8, seed=1)
    shared = DecodeEngine(model, max_batch_size=2, max_seq_len=128).generate_batch(batch, max_new_tokens=24)
    alone = DecodeEngine(model, max_batch_size=1, max_seq_len=128)
    assert shared == [alone.generate_batch([p], max_new_tokens=24)[0] for p in batch]


def test_engine_matches_generate_in_fp32():
    model = make_model(torch.float32)
    batch = prompts(4, seed=2)
    engine = DecodeEngine(model, max_batch_size=4, max_seq_len=128).generate_batch(batch, max_new_tokens=32)
    for prompt, tokens in zip(batch, engine):
        out = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        assert tokens == out[0, len(prompt):].tolist()


def test_sampling_in_graphs_varies_and_top_k_one_is_greedy():
    model = make_model(torch.float32)  # bf16 logits can tie at the top, and top-k 1 then keeps both
    engine = DecodeEngine(model, max_batch_size=4, max_seq_len=128)
    batch = prompts(4, seed=3)
    greedy = engine.generate_batch(batch, max_new_tokens=16)
    assert engine.generate_batch(batch, 16, SamplingParams(do_sample=True, temperature=0.5, top_k=1)) == greedy
    hot = SamplingParams(do_sample=True, temperature=2.0, top_p=0.95)
    assert engine.generate_batch(batch, 16, hot) != engine.generate_batch(batch, 16, hot)


def test_static_cache_generate_equals_dynamic_on_gpu():
    model = make_model(torch.float32)
    ids = torch.tensor(prompts(1, seed=4), device="cuda")
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    dynamic = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), dynamic)


def test_fused_step_equals_the_module_step():
    """The fused kernels compute what the model's modules compute: same tokens in fp32, close logits in bf16."""
    model = make_model(torch.float32)
    batch = prompts(4, seed=5)
    fused = DecodeEngine(model, max_batch_size=4, max_seq_len=128, fused=True).generate_batch(batch, 32)
    modules = DecodeEngine(model, max_batch_size=4, max_seq_len=128, fused=False).generate_batch(batch, 32)
    assert fused == modules


def test_fused_step_equals_the_module_step_with_a_bf16_state():
    """With the Mamba state held in bf16, the fused kernel and the modules' state update round it the same way:
    same tokens, and the slots' states agree."""
    model = make_model(torch.float32)
    batch = prompts(4, seed=6)
    engines = [DecodeEngine(model, max_batch_size=4, max_seq_len=128, fused=fused, ssm_state_dtype=torch.bfloat16)
               for fused in (True, False)]
    fused, modules = (engine.generate_batch(batch, 32) for engine in engines)
    assert fused == modules
    for index, state in engines[0].state.ssm.items():
        assert state.dtype == torch.bfloat16
        torch.testing.assert_close(state.float(), engines[1].state.ssm[index].float(), rtol=2e-2, atol=1e-3)


def test_chunked_prefill_and_the_prefix_cache_give_the_tokens_of_a_whole_prefill():
    """fp32 on the GPU's kernels: prompts prefilled in 7-token chunks, and prompts sharing a 70-token prefix
    resumed from the prefix cache (16-token blocks), decode as the whole-prompt prefill does."""
    model = make_model(torch.float32)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(3, 1000, (70,), generator=g).tolist()
    batch = [prefix + torch.randint(3, 1000, (int(n),), generator=g).tolist() for n in (5, 30, 12, 1)]
    whole = DecodeEngine(model, max_batch_size=2, max_seq_len=256).generate_batch(batch, max_new_tokens=32)
    chunked = DecodeEngine(model, max_batch_size=2, max_seq_len=256, prefill_chunk_size=7)
    cached = DecodeEngine(model, max_batch_size=2, max_seq_len=256, prefill_chunk_size=40, prefix_cache_blocks=32,
                          prefix_block_size=16)
    assert chunked.generate_batch(batch, max_new_tokens=32) == whole
    assert cached.generate_batch(batch, max_new_tokens=32) == whole
    assert cached.prefix_cache.hit_tokens >= 3 * 64
