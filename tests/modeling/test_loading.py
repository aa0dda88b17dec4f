"""Saving, loading (Auto classes, remote code, device_map) and PEFT on tiny Apriel-H1 models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

import modeling_apriel_h1
from modeling_apriel_h1 import REMOTE_CODE_FILES, AprielH1Config, AprielH1ForCausalLM

from ..remote_code import assert_remote_code_reproduces
from .tiny import tiny_config


@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[AprielH1ForCausalLM, Path]:
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path / "hybrid")
    return model, tmp_path / "hybrid"


def test_save_and_load_round_trip_is_exact(saved_model):
    model, path = saved_model
    loaded = AprielH1ForCausalLM.from_pretrained(path).eval()
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    assert loaded.config.layer_types == model.config.layer_types


def test_auto_classes_load_a_saved_hybrid(saved_model):
    model, path = saved_model
    config = AutoConfig.from_pretrained(path)
    assert isinstance(config, AprielH1Config)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert isinstance(loaded, AprielH1ForCausalLM)
    ids = torch.randint(3, 97, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_saved_directory_carries_auto_map_and_modeling_files(saved_model):
    _, path = saved_model
    auto_map = json.loads((path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_apriel_h1.AprielH1Config"
    assert auto_map["AutoModelForCausalLM"] == "modeling_apriel_h1.AprielH1ForCausalLM"
    assert {file.name for file in path.glob("*.py")} == set(REMOTE_CODE_FILES)


def test_the_files_beside_the_package_init_are_exactly_what_ships_as_remote_code():
    """The folder shows what a Hub user downloads: the engine and the kernels live in subpackages."""
    package = Path(modeling_apriel_h1.__file__).parent
    assert {path.name for path in package.glob("*.py")} - {"__init__.py"} == set(REMOTE_CODE_FILES)


def test_remote_code_loads_where_the_package_is_not_installed(saved_model, tmp_path):
    model, path = saved_model
    ids = torch.randint(3, 97, (1, 8))
    with torch.no_grad():
        expected = model(ids).logits
    assert_remote_code_reproduces(path, ids, expected, tmp_path)


def test_device_map_auto_loads_on_cpu(saved_model):
    model, path = saved_model
    loaded = AutoModelForCausalLM.from_pretrained(path, device_map="auto").eval()
    ids = torch.randint(3, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_bf16_load_keeps_the_dtype(saved_model):
    _, path = saved_model
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    assert loaded.model.layers[1].mixer.in_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.randint(3, 97, (1, 5))).logits.float()).all()


def test_lora_on_attention_and_mamba_projections_trains_only_the_adapters():
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config())
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "in_proj", "dt_in_proj", "out_proj"],
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, lora)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(".mixer.in_proj.lora_A" in name for name in trainable)
    assert any(".self_attn.q_proj.lora_A" in name for name in trainable)
    frozen_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 97, (4, 12))
    losses = []
    for _ in range(15):
        loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for name, p in peft_model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layer_types": ["attention", "mamba"]}, "layer_types has 2 entries but num_hidden_layers is 4"),
        ({"layer_types": ["attention", "mamba", "ssm", "attention"]}, "layer_types[2] is 'ssm'"),
        ({"layer_types": ["mamba"] * 4}, "has no attention layer"),
        ({"mamba_d_xb": 20}, "mamba_d_xb is 20; it must be a positive multiple of mamba_d_state (8)"),
        ({"mamba_d_inner": 48}, "mamba_d_inner (48) / mamba_d_state must be a multiple of mamba_d_xb"),
        ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads (3)"),
        ({"kernel_backend": "cuda"}, "kernel_backend is 'cuda'"),
    ],
)
def test_bad_configs_raise_errors_that_name_the_problem(overrides, message):
    with pytest.raises(ValueError) as error:
        tiny_config(**overrides)
    assert message in str(error.value)
