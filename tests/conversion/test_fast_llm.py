"""Fast-LLM interop: released Apriel-H1 configs and checkpoints, the doubled dt bias, the block-pattern config."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conversion.fast_llm import (
    RELEASED_ARCHITECTURE,
    RELEASED_MODEL_TYPE,
    config_from_released,
    export_released_checkpoint,
    fast_llm_decoder_from_config,
    import_released_checkpoint,
    layer_types_from_fast_llm_decoder,
    released_config_from,
)
from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM
from modeling_apriel_h1.mamba_reference import selective_scan

from ..modeling.tiny import TINY
from .teachers import input_ids

# The released Apriel-H1-15b config (fast_llm/models/ssm/external/apriel_15b_hybrid/vllm/config.json), shrunk.
RELEASED = {
    "model_type": RELEASED_MODEL_TYPE,
    "architectures": [RELEASED_ARCHITECTURE],
    "rope_theta": 1000000.0, "rope_scaling": {"rope_type": "default"},
    "hidden_act": "silu", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 97, "tie_word_embeddings": False,
    "rms_norm_eps": 1e-05, "head_dim": 16, "max_position_embeddings": 256, "sliding_window": None,
    "ssm_cfg": {
        "d_state": 8, "n_v_heads": 32, "n_qk_heads": 32, "expand": 1, "chunk_size": 128, "bias": False,
        "activation": "silu", "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 0.0001,
        "dt_scale": 1.0, "d_xb": 32, "d_conv": 4, "dt_init": "random", "d_inner": 64,
    },
    "hybrid_block_layout": ["t", "m2", "m2", "t"],
}


def test_released_config_maps_to_ours():
    config = config_from_released(RELEASED)
    assert config.layer_types == ["full_attention", "linear_attention", "linear_attention", "full_attention"]
    assert (config.mamba_d_state, config.mamba_d_inner, config.mamba_d_xb) == (8, 64, 32)
    assert config.mamba_dt_rank == math.ceil(64 / 16)  # "auto"
    assert (config.mamba_conv_bias, config.mamba_dt_proj_bias, config.mamba_proj_bias) == (True, True, False)
    assert config.rope_parameters["rope_theta"] == 1000000.0 and not config.attention_bias


def test_our_config_round_trips_through_the_released_format():
    ours = AprielH1Config(**TINY, layer_types=["attention", "mamba", "attention", "mamba"], mamba_d_state=8, mamba_dt_rank=5, mamba_conv_bias=False)
    released = released_config_from(ours)
    assert released["hybrid_block_layout"] == ["t", "m2", "t", "m2"]
    assert released["auto_map"]["AutoModelForCausalLM"] == "modeling_ssm_hybrid_apriel15b.AprielThinkerSSMHybridForCausalLM"
    back = config_from_released(json.loads(json.dumps(released)))
    skip = {"transformers_version", "dtype"}
    assert {k: v for k, v in back.to_dict().items() if k not in skip} == {k: v for k, v in ours.to_dict().items() if k not in skip}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ssm_cfg": {**RELEASED["ssm_cfg"], "repeat_kv_before_conv": False}}, "repeat_kv_before_conv is False"),
        ({"hybrid_block_layout": ["t", "m2d", "m2", "t"]}, "block types ['m2d']"),
        ({"hybrid_block_layout": ["t", "m2", "t"]}, "hybrid_block_layout has 3 entries but num_hidden_layers is 4"),
    ],
)
def test_released_configs_we_cannot_represent_are_refused(change, message):
    with pytest.raises(ValueError) as error:
        config_from_released({**RELEASED, **change})
    assert message in str(error.value)


def test_attention_biases_cannot_be_exported_to_the_released_format():
    with pytest.raises(ValueError, match="bias-free attention"):
        released_config_from(AprielH1Config(**TINY, attention_bias=True))


def _fast_llm_mixer(tensors: dict[str, torch.Tensor], hidden: torch.Tensor, d_state: int) -> torch.Tensor:
    """Fast-LLM's Mamba2.forward (apriel_hybrid_ssm), written out: dt_proj keeps its bias AND the scan adds it."""
    d_conv = tensors["conv1d.weight"].shape[-1]
    d_inner, d_xb = tensors["out_proj.weight"].shape[1], (tensors["in_proj.weight"].shape[0] - 2 * tensors["out_proj.weight"].shape[1]) // 2
    batch, length, _ = hidden.shape
    z, x, B, C = F.linear(hidden, tensors["in_proj.weight"]).split([d_inner, d_xb, d_xb, d_inner], dim=-1)
    repeat = d_inner // d_xb

    def repeat_kv(t):  # "b l (g n) -> b g l n", repeat each group in place, back
        groups = t.view(batch, length, -1, d_state).transpose(1, 2)
        return groups[:, :, None].expand(-1, -1, repeat, -1, -1).reshape(batch, -1, length, d_state)

    B = repeat_kv(B).transpose(2, 3)  # (b, groups, n, l)
    C = C.view(batch, length, -1, d_state).permute(0, 2, 3, 1)
    x = repeat_kv(x).transpose(2, 3).reshape(batch, d_inner, length)
    dt = F.linear(F.linear(hidden, tensors["dt_in_proj.weight"]), tensors["dt_proj.weight"], tensors["dt_proj.bias"])
    x = F.silu(F.conv1d(x, tensors["conv1d.weight"], tensors["conv1d.bias"], padding=d_conv - 1, groups=d_inner)[..., :length])
    y = selective_scan(
        x, dt.transpose(1, 2), -torch.exp(tensors["A_log"]), B, C, tensors["D"], z=z.transpose(1, 2),
        delta_bias=tensors["dt_proj.bias"], delta_softplus=True,
    )
    return F.linear(y.transpose(1, 2), tensors["out_proj.weight"])


def _random_released_weights(config: AprielH1Config, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = AprielH1ForCausalLM(config).state_dict()
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if name.endswith("dt_proj.bias"):  # a realistic Fast-LLM dt bias: inverse softplus of dt in [1e-3, 1e-1]
            dt = torch.exp(torch.rand(tensor.shape, generator=generator) * math.log(100) + math.log(1e-3))
            state[name] = dt + torch.log(-torch.expm1(-dt))
    return {name: tensor.contiguous() for name, tensor in state.items()}


def test_an_imported_mixer_computes_what_the_fast_llm_mixer_computes():
    config = config_from_released(RELEASED)
    released = _random_released_weights(config)
    model = AprielH1ForCausalLM(config).eval()
    model.load_state_dict({name: tensor * (2 if name.endswith("dt_proj.bias") else 1) for name, tensor in released.items()})
    prefix = "model.layers.1.mixer."
    mixer_tensors = {name.removeprefix(prefix): tensor for name, tensor in released.items() if name.startswith(prefix)}
    hidden = torch.randn(2, 9, config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.model.layers[1].mixer(hidden)
        theirs = _fast_llm_mixer(mixer_tensors, hidden, config.mamba_d_state)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_released_checkpoint_imports_loads_and_exports_back_exactly(tmp_path):
    source = tmp_path / "released"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(RELEASED))
    released = _random_released_weights(config_from_released(RELEASED))
    save_file(released, source / "model.safetensors", metadata={"format": "pt"})

    import_released_checkpoint(source, tmp_path / "ours")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert isinstance(model, AprielH1ForCausalLM)
    name = "model.layers.2.mixer.dt_proj.bias"
    assert torch.equal(model.state_dict()[name], released[name] * 2)
    reference = AprielH1ForCausalLM(config_from_released(RELEASED)).eval()
    reference.load_state_dict({k: v * (2 if k.endswith("dt_proj.bias") else 1) for k, v in released.items()})
    with torch.no_grad():
        assert torch.equal(model(input_ids()).logits, reference(input_ids()).logits)

    export_released_checkpoint(tmp_path / "ours", tmp_path / "back")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert back.keys() == released.keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in released.items())
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config_from_released(exported).to_dict() == config_from_released(RELEASED).to_dict()
    assert exported["hybrid_block_layout"] == RELEASED["hybrid_block_layout"]


def test_pattern_decoder_round_trips_with_our_layer_types():
    config = AprielH1Config(**TINY, layer_types=["attention", "mamba", "mamba", "attention"], mamba_d_state=8, mamba_proj_bias=True)
    decoder = fast_llm_decoder_from_config(config)
    assert decoder["pattern"] == ["attention", "mamba", "mamba", "attention"] and decoder["num_blocks"] == 4
    assert decoder["blocks"]["mamba"]["mixer"]["type"] == "mamba"
    layer_types, mamba = layer_types_from_fast_llm_decoder(decoder)
    assert layer_types == config.layer_types
    rebuilt = AprielH1Config(**TINY, layer_types=layer_types, **mamba)
    assert rebuilt.to_dict() == config.to_dict()


def test_a_short_pattern_repeats_and_the_old_mamba_2_name_is_accepted():
    mixer = {"type": "mamba_2", "d_inner": 64, "d_xb": 32, "dt_rank": 4, "state_size": 8, "add_linear_biases": False}
    decoder = {"type": "pattern", "blocks": {"a": {"mixer": {"type": "attention"}}, "m": {"mixer": mixer}}, "pattern": ["a", "m"], "num_blocks": 4}
    layer_types, mamba = layer_types_from_fast_llm_decoder(decoder)
    assert layer_types == ["full_attention", "linear_attention"] * 2
    assert mamba["mamba_conv_bias"] is False and mamba["mamba_dt_proj_bias"] is False  # follow add_linear_biases


@pytest.mark.parametrize(
    ("mixer", "message"),
    [
        ({"type": "gated_delta_net"}, "mixer type 'gated_delta_net'"),
        ({"type": "mamba", "d_inner": 64, "d_xb": 32}, "lacks ['dt_rank']"),
        ({"type": "mamba", "d_inner": 64, "d_xb": 32, "dt_rank": 4, "repeat_kv_before_conv": False}, "repeat_kv_before_conv is False"),
        ({"type": "mamba", "d_inner": 64, "d_xb": 32, "dt_rank": 4, "z_layer": {"bias": {"enabled": False}}}, "z_layer.bias.enabled=False"),
    ],
)
def test_pattern_decoders_we_cannot_represent_are_refused(mixer, message):
    decoder = {"type": "pattern", "blocks": {"x": {"mixer": mixer}}, "pattern": ["x"], "num_blocks": 2}
    with pytest.raises(ValueError) as error:
        layer_types_from_fast_llm_decoder(decoder)
    assert message in str(error.value)
