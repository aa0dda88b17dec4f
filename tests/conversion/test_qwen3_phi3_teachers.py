"""Qwen3 (per-head q/k norms) and Phi-3 / Phi-4 (fused qkv_proj and gate_up_proj, partial rotary, longrope)
teachers, built from transformers' own config classes: exact conversion, generate() == the decode engine, a
distillation that lowers the KL, save/load (also as remote code), and the refusals for what stays unsupported."""

from __future__ import annotations

import json

import pytest
import transformers
from packaging import version
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    PretrainedConfig,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    TrainingArguments,
    default_data_collator,
)

from conversion import convert_checkpoint, convert_model
from conversion.fast_llm import export_released_checkpoint, fast_llm_decoder_from_config
from conversion.teachers import UnsupportedTeacherError, hybrid_config_from_teacher
from modeling_apriel_h1 import AprielH1ForCausalLM, AprielHConfig
from modeling_apriel_h1.engine.decoding import DecodeEngine
from recipes.training.distillation import DistillationTrainer
from recipes.training.kd_loss import token_divergence
from tests.remote_code import assert_remote_code_reproduces

from ..modeling.tiny import TINY, tiny_config

FAMILIES = ("qwen3", "phi3", "phi4_mini")
LONGROPE = dict(original_max_position_embeddings=24, max_position_embeddings=256)


def _longrope(rotary_dim: int) -> dict:
    half = rotary_dim // 2
    return {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0 + 0.05 * i for i in range(half)],
            "long_factor": [1.5 + 0.25 * i for i in range(half)], "partial_rotary_factor": 0.75}


def teacher_config(family: str, **overrides) -> PretrainedConfig:
    """Tiny (head_dim 16); ``phi4_mini`` is Phi-4-mini's attention: partial rotary 0.75, longrope, tied embeddings;
    ``phi3_partial`` rotates half of each head with the default rope."""
    fields = {key: value for key, value in TINY.items() if key != "head_dim"}
    if family == "qwen3":
        return Qwen3Config(**{**fields, "head_dim": 16, **overrides})
    if family == "phi3":
        return Phi3Config(**{**fields, **overrides})
    if family == "phi3_partial":  # partial rotary with the default rope type
        return Phi3Config(**{**fields, "partial_rotary_factor": 0.5, **overrides})
    if family == "phi4_mini":
        return Phi3Config(**{**fields, **LONGROPE, "tie_word_embeddings": True,
                             "rope_parameters": _longrope(12), **overrides})
    raise ValueError(family)


def build_teacher(config: PretrainedConfig, seed: int = 0):
    """A random teacher whose norm weights (Qwen3's q/k norms too) are not all ones."""
    torch.manual_seed(seed)
    model = (Qwen3ForCausalLM if isinstance(config, Qwen3Config) else Phi3ForCausalLM)(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0, 0.3)
    return model.eval()


def ids(batch: int = 2, length: int = 40, seed: int = 0, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", (*FAMILIES, "phi3_partial"))
def test_converting_no_layer_gives_the_teacher_logits(family):
    """40 tokens: past Phi-4-mini's longrope switch (24), so the long factors are checked too."""
    teacher = build_teacher(teacher_config(family))
    student = convert_model(teacher, [])
    assert student.config.attention_qk_norm == (family == "qwen3")
    with torch.no_grad():
        difference = (student(ids()).logits - teacher(ids()).logits).abs().max()
    assert difference <= 1e-5


@pytest.mark.parametrize(
    "family, layout",
    [("qwen3", dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128)),  # Qwen3-0.6B
     ("phi4_mini", dict(hidden_size=3072, num_attention_heads=24, num_key_value_heads=8,  # Phi-4-mini
                        rope_parameters=_longrope(96)))],
)
def test_real_head_layouts_convert_to_the_teacher_logits(family, layout):
    teacher = build_teacher(teacher_config(family, num_hidden_layers=2, intermediate_size=256, **layout))
    student = convert_model(teacher, [])
    assert student.config.rotary_dim == (128 if family == "qwen3" else 96)
    with torch.no_grad():
        difference = (student(ids(length=32)).logits - teacher(ids(length=32)).logits).abs().max()
    assert difference <= 1e-5


def test_fused_projections_are_split_into_ours():
    teacher = build_teacher(teacher_config("phi3"))
    student = convert_model(teacher, [1])
    q, k, v = teacher.model.layers[0].self_attn.qkv_proj.weight.split([64, 32, 32])
    attention = student.model.layers[0].self_attn
    for ours, theirs in ((attention.q_proj, q), (attention.k_proj, k), (attention.v_proj, v)):
        assert torch.equal(ours.weight, theirs)
    gate, up = teacher.model.layers[2].mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(student.model.layers[2].mlp.gate_proj.weight, gate)
    assert torch.equal(student.model.layers[2].mlp.up_proj.weight, up)
    in_proj = student.model.layers[1].mixer.in_proj.weight  # z | x <- W_V | B <- W_K | C <- W_Q
    q, k, v = teacher.model.layers[1].self_attn.qkv_proj.weight.split([64, 32, 32])
    assert torch.equal(in_proj[64:], torch.cat([v, k, q]))


def test_qwen3_q_and_k_norm_weights_scale_c_and_b_when_folded():
    teacher = build_teacher(teacher_config("qwen3"))
    attention = teacher.model.layers[1].self_attn
    folded = convert_model(teacher, [1], fold_qk_norms=True).model.layers[1].mixer.in_proj.weight
    copied = convert_model(teacher, [1], fold_qk_norms=False).model.layers[1].mixer.in_proj.weight
    q_gain, k_gain = attention.q_norm.weight.repeat(4)[:, None], attention.k_norm.weight.repeat(2)[:, None]
    torch.testing.assert_close(folded[128:], attention.q_proj.weight * q_gain)  # C
    torch.testing.assert_close(folded[96:128], attention.k_proj.weight * k_gain)  # B
    assert torch.equal(copied[128:], attention.q_proj.weight) and torch.equal(copied[96:128], attention.k_proj.weight)
    assert torch.equal(folded[:96], copied[:96])  # z and x do not depend on the choice


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_equals_the_decode_engine_with_mamba_layers(family):
    student = convert_model(build_teacher(teacher_config(family)), [1, 2])
    prompts = [ids(1, length, seed=length)[0].tolist() for length in (5, 9, 3)]
    engine = DecodeEngine(student, max_batch_size=2, max_seq_len=24).generate_batch(prompts, max_new_tokens=12)
    for prompt, tokens in zip(prompts, engine):
        out = student.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        assert tokens == out[0, len(prompt):].tolist()


@pytest.mark.skipif(
    version.parse(transformers.__version__) < version.parse("5.24"),
    reason="under transformers 5.17 the teacher's own generate() across the longrope switch gives other tokens than "
    "ours (its Phi-3 drops the cache there without resizing the step's input); the reference holds from 5.24",
)
def test_generate_across_the_longrope_switch_recomputes_as_the_teacher_does():
    """Phi-4-mini's longrope changes every angle past 24 tokens here; generate() from 18 tokens to 30 crosses it."""
    teacher = build_teacher(teacher_config("phi4_mini"))
    prompt = ids(1, 18)
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                  return_dict_in_generate=True)
    expected = teacher.generate(prompt, **kwargs)
    got = convert_model(teacher, []).generate(prompt, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert max((a - b).abs().max() for a, b in zip(got.logits, expected.logits)) <= 1e-5


def test_the_engine_refuses_what_its_cache_cannot_follow():
    phi = build_teacher(teacher_config("phi3"))
    with pytest.raises(ValueError, match="fused q/k/v projections"):
        DecodeEngine(phi)
    longrope = convert_model(build_teacher(teacher_config("phi4_mini")), [1])
    with pytest.raises(ValueError, match="max_seq_len <= 24"):
        DecodeEngine(longrope, max_seq_len=32)


@pytest.mark.parametrize("family", ("qwen3", "phi4_mini"))
def test_a_short_distillation_lowers_the_kl_to_the_teacher(family, tmp_path):
    teacher = build_teacher(teacher_config(family, max_position_embeddings=256))
    with torch.no_grad():
        teacher.lm_head.weight.mul_(4)  # a confident teacher, far from the student's first guess
    student = convert_model(teacher, [1, 2]).train()
    rows = ids(16, 20, seed=3)
    dataset = Dataset.from_dict({"input_ids": rows.tolist(), "attention_mask": torch.ones_like(rows).tolist(),
                                 "labels": rows.tolist()})
    held_out = ids(4, 20, seed=4)

    def kl() -> float:
        student.eval()
        with torch.no_grad():
            value = token_divergence(student(held_out).logits, teacher(held_out).logits, "reverse_kl").mean().item()
        student.train()
        return value

    before = kl()
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=4, learning_rate=3e-3, report_to=[],
        save_strategy="no", logging_steps=5, seed=0, disable_tqdm=True,
    )
    DistillationTrainer(model=student, teacher_model=teacher, args=arguments, train_dataset=dataset,
                        data_collator=default_data_collator, chunk_size=64).train()
    assert kl() < 0.9 * before


@pytest.mark.parametrize("family", ("qwen3", "phi4_mini"))
def test_a_saved_hybrid_loads_back(family, tmp_path):
    student = convert_model(build_teacher(teacher_config(family)), [1])
    student.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["attention_qk_norm"] == (family == "qwen3")
    assert saved["rope_parameters"] == student.config.rope_parameters
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids(length=30)).logits, student(ids(length=30)).logits)


def test_q_k_norms_and_partial_longrope_load_as_remote_code(tmp_path):
    """One hybrid with both families' features (a fresh process per load is slow): Qwen3's q/k norms and
    Phi-4-mini's partial longrope rotary, 30 tokens (past the longrope switch at 24)."""
    config = tiny_config(attention_qk_norm=True, rope_parameters=_longrope(12), **LONGROPE)
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0, 0.3)
        expected = model(ids(length=30)).logits
    model.save_pretrained(tmp_path / "model")
    assert_remote_code_reproduces(tmp_path / "model", ids(length=30), expected, tmp_path)


def test_streaming_conversion_of_a_phi_checkpoint_equals_the_in_memory_one(tmp_path):
    teacher = build_teacher(teacher_config("phi4_mini"))
    teacher.save_pretrained(tmp_path / "teacher")
    convert_checkpoint(tmp_path / "teacher", tmp_path / "student", [1], progress=False)
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    in_memory = convert_model(teacher, [1])
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(streamed.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "model_type, missing",
    [("gemma3_text", "interleaved sliding-window"), ("qwen3_moe", "mixture-of-experts"),
     ("deepseek_v3", "multi-head latent attention"), ("mixtral", "mixture-of-experts")],
)
def test_unsupported_families_are_refused_naming_what_is_missing(model_type, missing):
    from transformers import AutoConfig

    with pytest.raises(UnsupportedTeacherError, match=f"model_type '{model_type}' is not supported: it uses {missing}"):
        hybrid_config_from_teacher(AutoConfig.for_model(model_type), [])


def test_a_qwen3_sliding_window_on_some_layers_only_is_refused():
    config = teacher_config("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=2)
    with pytest.raises(UnsupportedTeacherError, match="sliding-window attention on some layers only"):
        hybrid_config_from_teacher(config, [1])


def test_a_phi_window_longer_than_every_position_is_dropped_and_a_shorter_one_kept():
    """Phi-4-mini's window (262144 at 131072 positions) masks nothing; Phi-3-mini's (2047 at 4096) does."""
    assert hybrid_config_from_teacher(teacher_config("phi3", sliding_window=4096), []).sliding_window is None
    teacher = build_teacher(teacher_config("phi3", sliding_window=8))
    student = convert_model(teacher, [])
    assert student.config.sliding_window == 8
    with torch.no_grad():
        assert (student(ids()).logits - teacher(ids()).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("family, feature", [("qwen3", "per-head q/k norms"), ("phi4_mini", "turns 12 of 16")])
def test_exports_the_released_and_fast_llm_formats_cannot_hold_are_refused(family, feature, tmp_path):
    student = convert_model(build_teacher(teacher_config(family)), [1])
    student.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=feature):
        export_released_checkpoint(tmp_path / "model", tmp_path / "released")
    assert not (tmp_path / "released").exists()
    with pytest.raises(ValueError, match=feature):
        fast_llm_decoder_from_config(student.config)
    with pytest.raises(ValueError, match="no q/k norms" if family == "qwen3" else "rotates whole heads"):
        AprielHConfig(**{**TINY, "hybrid_block_layout": ["t", "m2", "t", "t"],
                         **({"attention_qk_norm": True} if family == "qwen3" else
                            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}})})
