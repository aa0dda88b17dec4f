"""Opt-in checks against a real released Apriel-H1 checkpoint directory (e.g. a download of
ServiceNow-AI/Apriel-H1-15b-Thinker-SFT, ~30 GB): ``APRIEL_H1_RELEASED=/path/to/it python -m pytest
tests/conversion/test_released_checkpoint.py -s``. Skipped when the variable is unset: the Hub is not reachable
from the machines these tests normally run on, and no released config.json is in the repository.

The config and header checks read only config.json and the safetensors headers (CPU, seconds); the decode
check loads the model on a GPU in bf16 and prints what it generates.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conversion.fast_llm import tensor_mismatches
from conversion.safetensors_io import CheckpointReader
from modeling_apriel_h1 import AprielHConfig, AprielHForCausalLM

RELEASED_PATH = os.environ.get("APRIEL_H1_RELEASED")
pytestmark = pytest.mark.skipif(
    not RELEASED_PATH,
    reason="set APRIEL_H1_RELEASED=/path/to/a released Apriel-H1 checkpoint directory to check it",
)


@pytest.fixture(scope="module")
def released() -> tuple[Path, dict, AprielHConfig]:
    path = Path(RELEASED_PATH)
    raw = json.loads((path / "config.json").read_text())
    return path, raw, AutoConfig.from_pretrained(path)


def test_the_released_config_reads_with_the_releases_semantics(released):
    _, raw, config = released
    assert raw["model_type"] == "apriel_h" and isinstance(config, AprielHConfig)
    layout = raw["hybrid_block_layout"]
    assert set(layout) <= {"t", "m2"} and len(layout) == raw["num_hidden_layers"] == config.num_hidden_layers
    assert config.layer_types == [{"t": "full_attention", "m2": "linear_attention"}[entry] for entry in layout]
    ssm, hidden = raw["ssm_cfg"], raw["hidden_size"]
    assert config.mamba_d_state == ssm.get("d_state", 64)
    assert config.mamba_d_inner == (ssm.get("d_inner", 4096) or ssm.get("expand", 1) * hidden)
    assert config.mamba_d_xb == (ssm.get("d_xb") or hidden)
    dt_rank = ssm.get("dt_rank", "auto")
    assert config.mamba_dt_rank == (math.ceil(hidden / 16) if dt_rank == "auto" else dt_rank)
    assert ssm.get("repeat_kv_before_conv", True) is True and config.mamba_dt_bias_in_projection
    print(f"\n{len(layout)} layers, {layout.count('m2')} Mamba; ssm_cfg {ssm}")


def test_every_released_tensor_maps_one_to_one_onto_our_state_dict(released):
    path, _, config = released
    reader = CheckpointReader(path)
    assert tensor_mismatches(reader, config) == []  # names 1:1 (no extra, none missing) and shapes
    dtypes = {name: reader.dtype(name) for name in reader.names}
    with torch.device("meta"):
        ours = AprielHForCausalLM(config).to(config.dtype or torch.float32).state_dict()
    wrong = {name: (dtype, ours[name].dtype) for name, dtype in dtypes.items() if dtype != ours[name].dtype}
    assert not wrong, f"dtypes (file, ours) differ: {dict(list(wrong.items())[:5])}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_release_loads_and_greedy_decodes_on_the_gpu(released):
    path, _, _ = released
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda").eval()
    assert isinstance(model, AprielHForCausalLM)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids.cuda()
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=16, do_sample=False)
        uncached = model.generate(ids, max_new_tokens=16, do_sample=False, use_cache=False)
    text = tokenizer.decode(cached[0, ids.shape[1] :])
    print(f"\ncached:   {text!r}\nuncached: {tokenizer.decode(uncached[0, ids.shape[1]:])!r}")
    assert cached.shape == (1, ids.shape[1] + 16)
    # decoding with the cache (single-token steps) and recomputing the whole prefix each step must agree
    assert torch.equal(cached, uncached)
