"""Checkpoint merging: a weighted average, streamed per shard, refusing mismatched layer patterns."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_apriel_h1 import AprielH1ForCausalLM
from recipes.merge import merge_checkpoints
from tests.modeling.tiny import tiny_config


def _save(path, seed, layer_types=None, max_shard_size="10MB"):
    torch.manual_seed(seed)
    model = AprielH1ForCausalLM(tiny_config(layer_types))
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return model


def test_weighted_merge_is_the_weighted_average_of_every_tensor(tmp_path):
    a = _save(tmp_path / "a", 0, max_shard_size="100KB")
    b = _save(tmp_path / "b", 1, max_shard_size="100KB")
    assert (tmp_path / "a" / "model.safetensors.index.json").is_file()  # the sharded path is exercised
    merge_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", weights=[3, 1])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    expected = {k: 0.75 * v + 0.25 * b.state_dict()[k] for k, v in a.state_dict().items()}
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7)
    record = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert record["weights"] == [0.75, 0.25]


def test_merging_different_layer_patterns_is_refused(tmp_path):
    _save(tmp_path / "a", 0, ["attention", "mamba", "mamba", "attention"])
    _save(tmp_path / "b", 1, ["attention", "mamba", "attention", "attention"])
    with pytest.raises(ValueError, match="only checkpoints with the same attention/Mamba pattern can be merged"):
        merge_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    _save(tmp_path / "a", 0)
    _save(tmp_path / "b", 1)
    (tmp_path / "merged").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    merge_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", overwrite=True)
    assert (tmp_path / "merged" / "config.json").is_file()


def test_weight_count_must_match(tmp_path):
    _save(tmp_path / "a", 0)
    _save(tmp_path / "b", 1)
    with pytest.raises(ValueError, match="got 3 weights for 2 checkpoints"):
        merge_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "m", weights=[1, 1, 1])
