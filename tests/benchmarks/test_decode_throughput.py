"""benchmarks/decode_throughput.py's roofline bytes (the benchmark itself needs a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.decode_throughput import step_bytes  # noqa: E402
from modeling_apriel_h1 import AprielH1ForCausalLM  # noqa: E402
from tests.modeling.tiny import tiny_config  # noqa: E402


def test_a_bf16_state_saves_half_the_state_bytes_a_step_reads_and_writes():
    model = AprielH1ForCausalLM(tiny_config())
    mixers = [layer.mixer for layer in model.model.layers if getattr(layer, "is_mamba", False)]
    assert mixers  # the tiny config mixes both kinds of layer
    rows, context = 3, 10
    state_elements = sum(mixer.d_inner * mixer.d_state for mixer in mixers)
    saved = step_bytes(model, rows, context) - step_bytes(model, rows, context, torch.bfloat16)
    assert saved == rows * state_elements * (4 - 2) * 2  # 2 bytes less per element, read and written
