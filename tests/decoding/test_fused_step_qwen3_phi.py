"""The decode engine's fused step on Qwen3-shaped (per-head q/k norms) and Phi-4-mini-shaped (partial rotary)
hybrids equals the step through the model's modules: same logits in fp32, close in bf16, and the same greedy
tokens in fp32.

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (fp32 only there, as for the other kernel tests)."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.sampling import SamplingParams
from tests.modeling.tiny import tiny_config
from tests.ops.interpretable import DEVICE, DTYPES, ON_CUDA_OR_INTERPRETED

pytestmark = ON_CUDA_OR_INTERPRETED

LAYERS = ["attention", "mamba", "mamba", "attention", "mamba", "attention"]
SHAPES = {
    # Qwen3-0.6B's attention: 16 heads, 8 KV heads, head_dim 128, q/k norms
    "qwen3": dict(hidden_size=256, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                  attention_qk_norm=True, mamba_d_state=16),
    # Phi-4-mini's: 24 heads, 8 KV heads, head_dim 128, 96 of them rotated (rope limited to its short factors)
    "phi4_mini": dict(hidden_size=384, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
                      mamba_d_state=16),
}


def make_model(shape: str, dtype: torch.dtype) -> AprielH1ForCausalLM:
    """The attention at the family's real head layout; narrow Mamba mixers (their width is not what is tested,
    and it keeps the run under Triton's interpreter short)."""
    torch.manual_seed(0)
    config = tiny_config(LAYERS, num_hidden_layers=len(LAYERS), intermediate_size=512, vocab_size=1000,
                         mamba_d_inner=256, mamba_d_xb=128, **SHAPES[shape])
    model = AprielH1ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0, 0.3)
    return model.to(DEVICE, dtype).eval()


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (int(n),), generator=g).tolist() for n in torch.randint(3, 20, (count,), generator=g)]


def step_logits(engine: DecodeEngine, batch: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Prefill ``batch`` into slots 0.. and run ``steps`` greedy steps; each step's logits."""
    engine.state.clear_bookkeeping()
    engine._prefill(list(range(len(batch))), batch, [steps + 1] * len(batch), SamplingParams())
    logits = []
    for _ in range(steps):
        logits.append(engine._step_logits(len(batch)))
        engine._record(len(batch), logits[-1].argmax(dim=-1))
    return logits


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fused_step_equals_the_module_step(shape, dtype):
    model = make_model(shape, dtype)
    batch = prompts(3)
    fused = DecodeEngine(model, max_batch_size=4, max_seq_len=64, fused=True, cuda_graphs=False)
    modules = DecodeEngine(model, max_batch_size=4, max_seq_len=64, fused=False, cuda_graphs=False)
    for step, (a, b) in enumerate(zip(step_logits(fused, batch, 6), step_logits(modules, batch, 6))):
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {step}")
        else:  # bf16: the kernels round once where the modules round after each operation
            assert (a - b).abs().max() <= 0.05 * b.abs().max(), f"step {step}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fused_engine_gives_the_module_engines_greedy_tokens(shape):
    model = make_model(shape, torch.float32)
    batch = prompts(4, seed=1)
    fused = DecodeEngine(model, max_batch_size=4, max_seq_len=64, fused=True).generate_batch(batch, 16)
    modules = DecodeEngine(model, max_batch_size=4, max_seq_len=64, fused=False).generate_batch(batch, 16)
    assert fused == modules
