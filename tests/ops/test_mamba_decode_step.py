"""The engine's one-kernel Mamba step (conv + state update, x and B read at KV width) against the mixer's own
step through the PyTorch reference kernels, over several steps so that both states carry forward.

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (fp32 only there: the interpreter's bf16 is unreliable)."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1 import AprielH1ForCausalLM
from tests.modeling.tiny import tiny_config
from tests.ops.interpretable import DEVICE, DTYPES, ON_CUDA_OR_INTERPRETED

pytestmark = ON_CUDA_OR_INTERPRETED


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads", [1, 2, 8])  # x and B widened 8x, 4x, not at all
@pytest.mark.parametrize("rows", [3, 20])  # both channel tiles (step_block_d)
def test_fused_step_equals_the_mixers_step(dtype, kv_heads, rows):
    from modeling_apriel_h1.ops.triton_kernels.mamba_decode_step import mamba_decode_step

    torch.manual_seed(kv_heads)
    config = tiny_config(["mamba", "attention"], num_hidden_layers=2, hidden_size=128, num_attention_heads=8,
                         num_key_value_heads=kv_heads, head_dim=16, mamba_d_state=16, kernel_backend="reference")
    mixer = AprielH1ForCausalLM(config).model.layers[0].mixer.to(DEVICE, dtype)
    torch.nn.init.normal_(mixer.conv1d.bias, std=0.2)
    torch.nn.init.normal_(mixer.D, std=1.0)
    conv = torch.randn(rows, mixer.d_inner, mixer.d_conv, device=DEVICE, dtype=dtype)
    ssm = torch.randn(rows, mixer.d_inner, mixer.d_state, device=DEVICE) * 0.3
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    A = -torch.exp(mixer.A_log.float())
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    with torch.no_grad():
        for _ in range(4):
            hidden = torch.randn(rows, config.hidden_size, device=DEVICE, dtype=dtype)
            expected = mixer.step(hidden[:, None], conv_ref, ssm_ref)[:, 0]
            z, x, B, C = mixer.in_proj(hidden).split([mixer.d_inner, mixer.d_xb, mixer.d_xb, mixer.d_inner], -1)
            y = mamba_decode_step(conv, ssm, x, z, mixer._time_step(hidden), A, B, C, mixer.D, mixer.dt_proj.bias,
                                  mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias)
            torch.testing.assert_close(mixer.out_proj(y), expected, **tolerance)
            torch.testing.assert_close(conv, conv_ref, rtol=0, atol=0)
            torch.testing.assert_close(ssm, ssm_ref, **tolerance)
