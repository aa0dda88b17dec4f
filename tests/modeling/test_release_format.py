"""Released Apriel-H1 directories (``model_type: apriel_h``) load with ``AutoModelForCausalLM`` as they are,
compute the release's equations (dt bias counted twice), and save back bit-identically. Fixtures are synthetic
(see release_format.py)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from modeling_apriel_h1 import AprielH1ForCausalLM, AprielHConfig, AprielHForCausalLM

from ..remote_code import assert_remote_code_reproduces
from .release_format import RELEASED, random_released_weights, released_logits, write_released_dir


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, RELEASED["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(seed))


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def released_dir(tmp_path):
    weights = random_released_weights(AprielHConfig.from_dict(RELEASED))
    return write_released_dir(tmp_path / "released", RELEASED, weights), weights


def test_a_released_directory_loads_natively_with_its_weights_untouched(released_dir):
    path, weights = released_dir
    before = _sha256(path / "model.safetensors")
    assert isinstance(AutoConfig.from_pretrained(path), AprielHConfig)
    model = AutoModelForCausalLM.from_pretrained(path)  # the release's own code is not in the directory
    assert isinstance(model, AprielHForCausalLM) and isinstance(model, AprielH1ForCausalLM)
    assert model.config.mamba_dt_bias_in_projection
    state = model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[name], tensor) for name, tensor in weights.items())
    assert _sha256(path / "model.safetensors") == before


def test_a_loaded_release_computes_the_release_equations_with_the_dt_bias_twice(released_dir):
    path, weights = released_dir
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ours = model(_ids()).logits
    expected = released_logits(RELEASED, weights, _ids())
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    model.config.mamba_dt_bias_in_projection = False  # the bias once: a different model, which the check sees
    with torch.no_grad():
        assert not torch.allclose(model(_ids()).logits, expected, rtol=1e-3, atol=1e-3)


def test_cached_decoding_counts_the_dt_bias_twice_as_prefill_does(released_dir):
    path, _ = released_dir
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = _ids()
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefix.past_key_values if hasattr(prefix, "past_key_values") else prefix.cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-5, atol=1e-5)


def test_missing_ssm_cfg_keys_take_the_release_defaults():
    config = AprielHConfig.from_dict({**RELEASED, "ssm_cfg": {}})
    assert (config.mamba_d_state, config.mamba_d_inner, config.mamba_d_xb) == (64, 4096, 64)  # d_xb None = hidden
    assert (config.mamba_dt_rank, config.mamba_d_conv) == (4, 4)  # "auto" = ceil(64 / 16)
    assert (config.mamba_proj_bias, config.mamba_conv_bias, config.mamba_dt_proj_bias) == (False, True, True)
    expanded = AprielHConfig.from_dict({**RELEASED, "ssm_cfg": {"d_inner": None, "expand": 2}})
    assert expanded.mamba_d_inner == 128  # d_inner None = expand * hidden, as the release's Mamba2 does


def test_a_release_with_missing_ssm_cfg_keys_loads_and_computes_the_release_equations(tmp_path):
    released = {**RELEASED, "ssm_cfg": {"d_inner": 128}}  # d_state 64, d_xb = hidden 64, dt_rank 4 from the defaults
    weights = random_released_weights(AprielHConfig.from_dict(released), seed=1)
    assert weights["model.layers.1.mixer.A_log"].shape == (128, 64)
    path = write_released_dir(tmp_path / "released", released, weights)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, released_logits(released, weights, _ids()), rtol=1e-5, atol=1e-5)


def test_fast_llm_layer_types_and_other_mixers_keys_are_checked_and_dropped(tmp_path):
    written_by_fast_llm = {
        **RELEASED,
        "layer_types": ["full_attention", "mamba2", "mamba2", "full_attention"],
        "linear_attn_config": {"short_conv_kernel_size": 4, "head_dim": 128, "num_heads": 32},
        "gdn_cfg": {"linear_num_key_heads": 16},
    }
    config = AprielHConfig.from_dict(written_by_fast_llm)
    assert config.layer_types == ["full_attention", "linear_attention", "linear_attention", "full_attention"]
    saved = config.to_dict()
    assert not {"layer_types", "linear_attn_config", "gdn_cfg"} & saved.keys()
    with pytest.raises(ValueError, match=r"disagrees with hybrid_block_layout"):
        AprielHConfig.from_dict({**written_by_fast_llm, "layer_types": ["full_attention", "mamba2", "full_attention", "full_attention"]})


def test_save_load_save_is_bit_identical_and_keeps_the_released_layout(released_dir, tmp_path):
    path, weights = released_dir
    AutoModelForCausalLM.from_pretrained(path).save_pretrained(tmp_path / "first")
    AutoModelForCausalLM.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    files = sorted(item.name for item in (tmp_path / "first").iterdir())
    assert files == sorted(item.name for item in (tmp_path / "second").iterdir())
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    saved = json.loads((tmp_path / "first" / "config.json").read_text())
    assert saved["model_type"] == "apriel_h" and saved["hybrid_block_layout"] == RELEASED["hybrid_block_layout"]
    assert {key: saved["ssm_cfg"][key] for key in ("d_state", "d_inner", "d_xb", "dt_rank")} == {"d_state": 8, "d_inner": 64, "d_xb": 32, "dt_rank": 4}
    assert "layer_types" not in saved and not any(key.startswith("mamba_") for key in saved)
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_apriel_h1.AprielHConfig",
        "AutoModelForCausalLM": "modeling_apriel_h1.AprielHForCausalLM",
    }
    assert {"configuration_apriel_h1.py", "modeling_apriel_h1.py"} <= set(files)
    original = AprielHForCausalLM.from_pretrained(path).state_dict()
    resaved = AprielHForCausalLM.from_pretrained(tmp_path / "first").state_dict()
    assert all(torch.equal(resaved[name], tensor) for name, tensor in original.items())


def test_a_saved_release_layout_loads_as_remote_code_where_the_package_is_not_installed(released_dir, tmp_path):
    path, _ = released_dir
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        expected = model(_ids()).logits  # the release's equations: checked above
    assert_remote_code_reproduces(tmp_path / "saved", _ids(), expected, tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hybrid_block_layout": ["t", "m2d", "m2", "i"]}, "entries ['i', 'm2d']"),
        ({"hybrid_block_layout": ["t", "gdn", "m2", "t"]}, "entries ['gdn']"),
        ({"hybrid_block_layout": ["t", "m2", "t"]}, "hybrid_block_layout has 3 entries but num_hidden_layers is 4"),
        ({"hybrid_block_layout": None}, "needs hybrid_block_layout"),
        ({"ssm_cfg": {**RELEASED["ssm_cfg"], "repeat_kv_before_conv": False}}, "repeat_kv_before_conv is False"),
        ({"attention_bias": True}, "bias-free attention"),
    ],
)
def test_released_configs_this_model_cannot_represent_are_refused_with_one_clear_error(tmp_path, change, message):
    path = tmp_path / "bad"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**RELEASED, **change}))
    with pytest.raises(ValueError) as error:
        AutoModelForCausalLM.from_pretrained(path)
    assert message in str(error.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-3), (torch.bfloat16, 6e-2)])
def test_a_loaded_release_on_the_gpu_kernels_matches_the_release_equations(released_dir, dtype, tolerance):
    """The GPU kernels (mamba-ssm or ours, whichever the dispatch picks) with the dt bias counted twice, against
    the fp32 equations on the CPU; then (fp32, where near-ties cannot flip) cached greedy decoding against
    recomputing the whole prefix at every step."""
    path, weights = released_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().eval()
    ids = _ids()
    with torch.no_grad():
        logits = model(ids.cuda()).logits.float().cpu()
        cached = model.generate(ids[:1].cuda(), max_new_tokens=8, do_sample=False)
        uncached = model.generate(ids[:1].cuda(), max_new_tokens=8, do_sample=False, use_cache=False)
    expected = released_logits(RELEASED, weights, ids)
    scale = expected.abs().max()
    assert (logits - expected).abs().max() <= tolerance * scale, ((logits - expected).abs().max(), scale)
    if dtype == torch.float32:
        assert torch.equal(cached, uncached)
