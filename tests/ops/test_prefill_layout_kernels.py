"""The channel-major Mamba prefill on the Triton kernels: they read z and C as strided views of one GEMM output
(unit time stride, a channel stride of the sequence length, a batch stride of all the projections), which the
token-major layout never hands them. Against the token-major prefill on the PyTorch reference, fp32, a fresh and a
continued sequence of two batch rows. On CUDA, or on the CPU under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1.modeling_apriel_h1 import AprielH1Mamba
from modeling_apriel_h1.ops import reference

from ..modeling.tiny import tiny_config
from .interpretable import DEVICE, ON_CUDA_OR_INTERPRETED

pytestmark = ON_CUDA_OR_INTERPRETED


def _mixer(layout: str, ops) -> AprielH1Mamba:
    torch.manual_seed(0)
    mixer = AprielH1Mamba(tiny_config(prefill_layout=layout, mamba_d_state=16), layer_idx=1).to(DEVICE)
    for parameter in mixer.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    with torch.no_grad():
        mixer.A_log.copy_(torch.rand_like(mixer.A_log))
    mixer.bound_kernels = ops  # the backend itself: resolve_ops refuses triton off CUDA, the interpreter runs it
    return mixer


def test_channel_major_prefill_on_triton_matches_token_major_on_the_reference():
    from modeling_apriel_h1.ops import triton_backend

    expected_mixer, mixer = _mixer("token_major", reference), _mixer("channel_major", triton_backend)
    hidden = torch.randn(2, 40, expected_mixer.config.hidden_size, device=DEVICE)
    with torch.no_grad():
        first = mixer.prefill(hidden[:, :21])
        expected_first = expected_mixer.prefill(hidden[:, :21])
        second = mixer.prefill(hidden[:, 21:], first[1], first[2])
        expected_second = expected_mixer.prefill(hidden[:, 21:], expected_first[1], expected_first[2])
    for got, expected in zip((*first, *second), (*expected_first, *expected_second)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
