"""The engine's fused step (Triton kernels for add + RMSNorm, rotary + KV write, SiLU x up and the one-kernel Mamba
step; packed projections) against its step through the model's own modules: the same greedy tokens in fp32, and
the slots' KV and Mamba states agree.

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (the engine's eager step then calls the kernels through
Triton's interpreter; the attention is the PyTorch reference there)."""

from __future__ import annotations

import torch

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.decoding import DecodeEngine
from tests.modeling.tiny import tiny_config
from tests.ops.interpretable import DEVICE, ON_CUDA_OR_INTERPRETED

pytestmark = ON_CUDA_OR_INTERPRETED

LAYERS = ["attention", "mamba", "mamba", "attention"]


def test_fused_step_equals_the_module_step():
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config(LAYERS, mamba_d_state=16)).to(DEVICE).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (int(n),), generator=generator).tolist() for n in (5, 11, 8)]
    engines = {fused: DecodeEngine(model, max_batch_size=2, max_seq_len=32, cuda_graphs=False, fused=fused)
               for fused in (True, False)}
    tokens = {fused: engine.generate_batch(prompts, max_new_tokens=6) for fused, engine in engines.items()}
    assert tokens[True] == tokens[False]
    fused, modules = engines[True].state, engines[False].state
    for index in fused.ssm:
        torch.testing.assert_close(fused.conv[index], modules.conv[index], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.ssm[index], modules.ssm[index], rtol=1e-4, atol=1e-5)
    for index in fused.keys:
        torch.testing.assert_close(fused.keys[index], modules.keys[index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.values[index], modules.values[index], rtol=1e-5, atol=1e-5)
