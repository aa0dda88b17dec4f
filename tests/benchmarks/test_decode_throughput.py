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


def test_the_qwen3_14b_shape_builds_a_qwen3_14b_class_hybrid_and_teacher():
    from transformers import Qwen3Config

    from benchmarks.decode_throughput import attention_fields, dims, evenly_spread, parse_arguments
    from modeling_apriel_h1 import AprielH1Config

    args = parse_arguments(["--part", "engine", "--shape", "qwen3-14b"])
    assert (args.layers, args.hidden, args.heads, args.kv_heads, args.head_dim, args.intermediate) == (
        40, 5120, 40, 8, 128, 17408)
    assert parse_arguments(["--part", "engine", "--shape", "qwen3-14b", "--layers", "4"]).layers == 4
    mamba = evenly_spread(round(30 / 50 * args.layers), args.layers)
    layer_types = ["mamba" if i in mamba else "attention" for i in range(args.layers)]
    with torch.device("meta"):
        hybrid = AprielH1ForCausalLM(AprielH1Config(**dims(args), **attention_fields(args), layer_types=layer_types))
        teacher = AprielH1ForCausalLM(AprielH1Config(**dims(args), **attention_fields(args)))
    assert len(mamba) == 24 and hasattr(teacher.model.layers[0].self_attn, "q_norm")
    parameters = sum(p.numel() for p in teacher.parameters())
    assert 14.5e9 < parameters < 15.0e9  # Qwen3-14B: 14.8B
    stock = Qwen3Config(**dims(args))
    assert stock.head_dim == 128 and stock.num_hidden_layers == 40
    assert sum(layer.is_mamba for layer in hybrid.model.layers) == 24
