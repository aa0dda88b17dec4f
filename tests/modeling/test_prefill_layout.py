"""The Mamba prefill's two projection layouts (``prefill_layout``) compute the same thing: the channel-major
one (GEMMs that write (channels, seq), no transposing copies) against the token-major one it replaces as the
reference, fp32 on the CPU, with every input the prefill takes."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.modeling_apriel_h1 import AprielH1Mamba

from .tiny import tiny_config


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str | None = None) -> None:
    """Equal up to fp32 rounding: the GEMMs sum in another order, so errors scale with the largest value."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-6 * scale, msg=msg)


def _mixers(**overrides) -> tuple[AprielH1Mamba, AprielH1Mamba]:
    """A random mixer with a token-major and a channel-major copy of the same weights."""
    torch.manual_seed(0)
    token = AprielH1Mamba(tiny_config(prefill_layout="token_major", **overrides), layer_idx=1)
    for parameter in token.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    with torch.no_grad():
        token.A_log.copy_(torch.rand_like(token.A_log))  # A = -exp(A_log) in (-e, -1): a decaying state
    channel = AprielH1Mamba(tiny_config(prefill_layout="channel_major", **overrides), layer_idx=1)
    channel.load_state_dict(token.state_dict())
    return token, channel


@pytest.mark.parametrize("overrides", [
    {},
    {"mamba_proj_bias": True, "mamba_dt_bias_in_projection": True},
    {"num_key_value_heads": 4},  # x and B not repeated (d_xb = d_inner)
])
@pytest.mark.parametrize("return_conv", ["window", "inputs", None])
def test_channel_major_prefill_matches_token_major(overrides, return_conv):
    token, channel = _mixers(**overrides)
    hidden = torch.randn(2, 11, token.config.hidden_size)
    conv_state = torch.randn(2, token.d_inner, token.d_conv)
    ssm_state = torch.randn(2, token.d_inner, token.d_state)
    padding = torch.ones(2, 11)
    padding[1, :3] = 0
    for states in ({}, {"conv_state": conv_state, "ssm_state": ssm_state}):
        expected = token.prefill(hidden, padding_mask=padding, return_conv=return_conv, **states)
        actual = channel.prefill(hidden, padding_mask=padding, return_conv=return_conv, **states)
        for want, got in zip(expected, actual):
            if want is None:
                assert got is None
            else:
                _assert_close(got, want)


def test_channel_major_prefill_passes_the_same_gradients():
    token, channel = _mixers()
    hidden = torch.randn(1, 9, token.config.hidden_size)
    for mixer in (token, channel):
        mixer.prefill(hidden)[0].square().sum().backward()
    for (name, want), got in zip(token.named_parameters(), channel.parameters()):
        _assert_close(got.grad, want.grad, msg=name)


def test_a_model_with_channel_major_prefill_gives_the_same_logits():
    torch.manual_seed(0)
    token = AprielH1ForCausalLM(tiny_config()).eval()
    channel = AprielH1ForCausalLM(tiny_config(prefill_layout="channel_major")).eval()
    channel.load_state_dict(token.state_dict())
    ids = torch.randint(3, 97, (2, 13))
    _assert_close(channel(ids).logits, token(ids).logits)


def test_an_unknown_layout_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="prefill_layout is 'fast'; choose one of"):
        tiny_config(prefill_layout="fast")
