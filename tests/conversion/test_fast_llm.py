"""Released-format and Fast-LLM interop: importing Fast-LLM exports, exporting ours to the released layout,
and Fast-LLM's block-pattern config. Fixtures are synthetic (see tests/modeling/release_format.py)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conversion.fast_llm import (
    config_from_released,
    export_released_checkpoint,
    fast_llm_decoder_from_config,
    import_released_checkpoint,
    released_config_from,
)
from conversion.released import main
from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM, AprielHConfig, AprielHForCausalLM

from ..modeling.release_format import RELEASED, random_released_weights, released_logits, write_released_dir
from ..modeling.tiny import TINY
from ..remote_code import assert_remote_code_reproduces
from .fast_llm_decoder import layer_types_from_fast_llm_decoder
from .teachers import input_ids

# What Fast-LLM's current exporter writes (SYNTHETIC, after fast_llm_external_models/apriel_hybrid_ssm/
# configuration_apriel_hybrid_ssm.py and fast_llm/models/gpt/conversion/apriel.py at Fast-LLM 7d61a1ba): one layout
# entry per pattern element with num_hidden_layers blocks, layer_types for vLLM, the keys of other mixers.
FAST_LLM_EXPORT = {
    **{key: value for key, value in RELEASED.items() if key not in ("auto_map", "architectures")},
    "model_type": "apriel_hybrid_ssm",
    "architectures": ["AprielHybridSSMForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_apriel_hybrid_ssm.AprielHybridSSMConfig"},
    "hybrid_block_layout": ["t", "m2"],
    "layer_types": ["full_attention", "mamba2"],
    "linear_attn_config": {"short_conv_kernel_size": 4, "head_dim": 128, "num_heads": 32},
    "ssm_cfg": {**RELEASED["ssm_cfg"], "n_v_heads": 32, "dt_proj_bias": True, "repeat_kv_before_conv": True},
}
EXPANDED_LAYOUT = ["t", "m2", "t", "m2"]


def _no_output_left(tmp_path, name: str) -> bool:
    return not any(item.name == name or item.name.startswith(f".{name}.") for item in tmp_path.iterdir())


def test_a_fast_llm_export_imports_with_its_pattern_repeated_and_foreign_keys_dropped(tmp_path):
    config = config_from_released(FAST_LLM_EXPORT)
    assert config.layer_types == ["full_attention", "linear_attention"] * 2
    weights = random_released_weights(config)
    source = write_released_dir(tmp_path / "fast_llm", FAST_LLM_EXPORT, weights)
    import_released_checkpoint(source, tmp_path / "imported")
    assert (tmp_path / "imported" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    written = json.loads((tmp_path / "imported" / "config.json").read_text())
    assert written["model_type"] == "apriel_h" and written["hybrid_block_layout"] == EXPANDED_LAYOUT
    assert not {"layer_types", "linear_attn_config", "gdn_cfg"} & written.keys()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "imported").eval()
    assert isinstance(model, AprielHForCausalLM)
    with torch.no_grad():
        logits = model(input_ids()).logits
    expected = released_logits({**RELEASED, "hybrid_block_layout": EXPANDED_LAYOUT}, weights, input_ids())
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hybrid_block_layout": ["t", "m2", "m2d", "t"]}, "entries ['m2d']"),
        ({"hybrid_block_layout": ["t", "m2", "t"]}, "hybrid_block_layout has 3 entries but num_hidden_layers is 4"),
        ({"ssm_cfg": {**RELEASED["ssm_cfg"], "repeat_kv_before_conv": False}}, "repeat_kv_before_conv is False"),
        ({"ssm_cfg": {**RELEASED["ssm_cfg"], "d_state": 16}}, "model.layers.1.mixer.A_log has shape (64, 8), the config needs (64, 16)"),
        ({"num_hidden_layers": 2, "hybrid_block_layout": ["t", "m2"]}, "unexpected model.layers.2."),
        ({"model_type": "apriel_h1"}, "not a released Apriel-H1 layout"),
    ],
)
def test_import_refuses_bad_inputs_with_one_clear_error_and_writes_nothing(tmp_path, change, message):
    fitting_the_unchanged_config = random_released_weights(AprielHConfig.from_dict(RELEASED))
    source = write_released_dir(tmp_path / "source", {**RELEASED, **change}, fitting_the_unchanged_config)
    with pytest.raises(ValueError) as error:
        import_released_checkpoint(source, tmp_path / "out")
    assert message in str(error.value)
    assert _no_output_left(tmp_path, "out")


@pytest.fixture
def ours(tmp_path):
    """One of our models (dt bias counted once) with realistic dt biases, saved."""
    config = AprielH1Config(**TINY, layer_types=["attention", "mamba", "attention", "mamba"], mamba_d_state=8, mamba_dt_rank=5, mamba_conv_bias=False)
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in (1, 3):
            model.model.layers[layer].mixer.dt_proj.bias.copy_(torch.linspace(-6.0, -2.0, config.mamba_d_inner))
    model.save_pretrained(tmp_path / "ours")
    return model, tmp_path / "ours"


def test_export_writes_the_released_layout_with_our_code_and_loads_here(ours, tmp_path):
    model, path = ours
    export_released_checkpoint(path, tmp_path / "exported")
    written = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert written["model_type"] == "apriel_h" and written["hybrid_block_layout"] == ["t", "m2", "t", "m2"]
    assert {key: written["ssm_cfg"][key] for key in ("d_state", "d_inner", "d_xb", "dt_rank", "conv_bias", "repeat_kv_before_conv")} == {
        "d_state": 8, "d_inner": 64, "d_xb": 32, "dt_rank": 5, "conv_bias": False, "repeat_kv_before_conv": True,
    }
    assert written["architectures"] == ["AprielHForCausalLM"]
    for reference in written["auto_map"].values():  # the code the auto_map names is in the folder
        assert (tmp_path / "exported" / f"{reference.split('.')[0]}.py").is_file(), reference
    source, exported = load_file(path / "model.safetensors"), load_file(tmp_path / "exported" / "model.safetensors")
    assert source.keys() == exported.keys()
    for name, tensor in source.items():
        expected = tensor / 2 if name.endswith("dt_proj.bias") else tensor  # counted twice from now on
        assert torch.equal(exported[name], expected), name
        assert torch.equal(exported[name] * (2 if name.endswith("dt_proj.bias") else 1), tensor), name  # exactly
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    assert isinstance(loaded, AprielHForCausalLM)
    with torch.no_grad():
        ours_logits, exported_logits = model(input_ids()).logits, loaded(input_ids()).logits
    torch.testing.assert_close(exported_logits, ours_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(released_logits(written, exported, input_ids()), ours_logits, rtol=1e-5, atol=1e-5)


def test_an_exported_directory_loads_as_remote_code_where_the_package_is_not_installed(ours, tmp_path):
    _, path = ours
    export_released_checkpoint(path, tmp_path / "exported")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        expected = loaded(input_ids()).logits
    assert_remote_code_reproduces(tmp_path / "exported", input_ids(), expected, tmp_path)


def test_exporting_a_released_layout_keeps_its_weights(tmp_path):
    weights = random_released_weights(AprielHConfig.from_dict(RELEASED))
    source = write_released_dir(tmp_path / "released", RELEASED, weights)
    export_released_checkpoint(source, tmp_path / "again")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert again.keys() == weights.keys() and all(torch.equal(again[name], tensor) for name, tensor in weights.items())


def test_export_refuses_what_the_released_format_cannot_hold_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="bias-free attention"):
        released_config_from(AprielH1Config(**TINY, attention_bias=True))
    config = AprielH1Config(**TINY, layer_types=["attention", "mamba", "attention", "attention"], mamba_d_state=8)
    torch.manual_seed(0)
    state = {name: tensor.contiguous() for name, tensor in AprielH1ForCausalLM(config).state_dict().items()}
    state["model.layers.1.mixer.D"] = torch.ones(3)
    source = tmp_path / "broken"
    AprielH1ForCausalLM(config).save_pretrained(source)
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.layers.1.mixer.D has shape \(3,\), the config needs \(64,\)"):
        export_released_checkpoint(source, tmp_path / "out")
    assert _no_output_left(tmp_path, "out")


def test_our_config_round_trips_through_the_released_format():
    ours = AprielH1Config(**TINY, layer_types=["attention", "mamba", "attention", "mamba"], mamba_d_state=8, mamba_dt_rank=5, mamba_conv_bias=False)
    released = released_config_from(ours)
    assert isinstance(released, AprielHConfig) and released.mamba_dt_bias_in_projection
    skip = {"transformers_version", "dtype", "mamba_dt_bias_in_projection"}
    assert {k: v for k, v in released.to_dict().items() if k not in skip} == {k: v for k, v in released_config_from(released).to_dict().items() if k not in skip}
    for name in ("layer_types", "mamba_d_state", "mamba_d_inner", "mamba_d_xb", "mamba_dt_rank", "mamba_conv_bias", "rope_parameters"):
        assert getattr(released, name) == getattr(ours, name), name


# ----- Fast-LLM's block-pattern config ------------------------------------------------------------------------------


def test_pattern_decoder_has_complete_blocks_and_round_trips_our_layer_types():
    config = AprielH1Config(**TINY, layer_types=["attention", "mamba", "mamba", "attention"], mamba_d_state=8, mamba_proj_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    decoder = fast_llm_decoder_from_config(config)
    assert decoder["pattern"] == ["attention", "mamba", "mamba", "attention"] and decoder["num_blocks"] == 4
    attention = decoder["blocks"]["attention"]["mixer"]
    assert attention == {
        "type": "attention", "heads": 4, "head_groups": 2, "head_size": 16, "add_linear_biases": False,
        "rotary": {"type": "default", "theta": 5e5}, "dropout": 0.0,
    }
    for block in decoder["blocks"].values():
        assert block["mlp"] == {"type": "mlp", "intermediate_size": 128, "gated": True, "activation": "silu", "add_linear_biases": False}
        assert block["normalization"] == {"type": "rms_norm", "epsilon": 1e-5}
    assert decoder["blocks"]["mamba"]["mixer"]["type"] == "mamba"
    layer_types, mamba = layer_types_from_fast_llm_decoder(decoder)
    assert layer_types == config.layer_types
    rebuilt = AprielH1Config(**TINY, layer_types=layer_types, **mamba, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    assert rebuilt.to_dict() == config.to_dict()


def test_pattern_decoder_carries_qwen2_style_biases_and_a_sliding_window():
    config = AprielH1Config(**TINY, attention_bias=True, attention_out_bias=False, sliding_window=64)
    attention = fast_llm_decoder_from_config(config)["blocks"]["attention"]["mixer"]
    assert attention["add_linear_biases"] is True and attention["dense_layer"] == {"bias": {"enabled": False}}
    assert attention["window_size"] == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "write blocks.*.mixer.rotary by hand"),
        ({"hidden_act": "gelu_new"}, "set blocks.*.mlp.activation by hand"),
    ],
)
def test_pattern_decoder_refuses_what_it_cannot_write_and_says_what_to_merge(change, message):
    with pytest.raises(ValueError) as error:
        fast_llm_decoder_from_config(AprielH1Config(**TINY, **change))
    assert message in str(error.value)


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


# ----- the command line -----------------------------------------------------------------------------------------------


def test_cli_exports_imports_and_prints_the_fast_llm_decoder(ours, tmp_path, capsys):
    _, path = ours
    assert main(["export", str(path), str(tmp_path / "exported")]) == 0
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "exported"), AprielHForCausalLM)
    assert main(["import", str(tmp_path / "exported"), str(tmp_path / "imported")]) == 0
    assert (tmp_path / "imported" / "model.safetensors").read_bytes() == (tmp_path / "exported" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["fast-llm-decoder", str(path)]) == 0
    decoder = yaml.safe_load(capsys.readouterr().out)["decoder"]
    assert decoder["pattern"] == ["attention", "mamba", "attention", "mamba"] and decoder["blocks"]["attention"]["mixer"]["heads"] == 4


def test_cli_bad_input_is_one_line_exit_2_and_nothing_written(ours, tmp_path, capsys):
    _, path = ours
    bad = write_released_dir(tmp_path / "bad", {**RELEASED, "hybrid_block_layout": ["t", "m2", "i", "t"]}, random_released_weights(AprielHConfig.from_dict(RELEASED)))
    cases = [
        (["import", str(bad), str(tmp_path / "out")], "entries ['i']"),
        (["import", str(tmp_path / "missing"), str(tmp_path / "out")], "does not exist"),
        (["import", str(path), str(tmp_path / "out")], "not a released Apriel-H1 layout"),
        (["fast-llm-decoder", str(bad)], "entries ['i']"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert _no_output_left(tmp_path, "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", str(path), str(tmp_path / "out")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert [item.name for item in (tmp_path / "out").iterdir()] == ["keep.txt"]
