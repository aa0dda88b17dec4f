"""MIL-Mamba-Replacement importance: end to end on a tiny teacher, resume, 2-shard merge, convert accepts it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conversion.convert import main as convert_main
from recipes.importance import mmr
from recipes.importance.__main__ import main
from recipes.importance.mmr import MmrSettings, attention_layers, merge_state_dir, run_mmr_candidates
from recipes.importance.ranking import read_ranking
from conversion.importance_file import read_importance
from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM
from tests.importance.tiny import tiny_mistral, tokenizer

NUM_LAYERS = 3


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def teacher(tok):
    return tiny_mistral(tok, num_layers=NUM_LAYERS, seed=1)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    # short prompt/completion rows keep sequences (character-level tokens) short
    path = tmp_path_factory.mktemp("data") / "short.jsonl"
    rows = [{"prompt": f"{a} + {b} =", "completion": str(a + b)} for a in range(4) for b in range(3)]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return MmrSettings(
        model="tiny-teacher", steps=3, learning_rate=3e-3, batch_size=4, max_length=48, data=str(path), eval_batches=1
    )


@pytest.fixture(scope="module")
def interrupted_then_resumed(teacher, tok, settings, tmp_path_factory):
    """One process, interrupted after its first candidate, then rerun: (payload, state dir, calls per run)."""
    state_dir = tmp_path_factory.mktemp("mmr-state")
    original = mmr.score_candidate
    calls = []

    def crash_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated crash")
        calls.append(args[1])
        return original(*args, **kwargs)

    mmr.score_candidate = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            run_mmr_candidates(teacher, tok, settings, state_dir, progress=False)
        after_crash = sorted(p.name for p in state_dir.glob("layer_*.json"))
        first_result = (state_dir / "layer_0000.json").read_text()
        resumed = []

        def counting(*args, **kwargs):
            resumed.append(args[1])
            return original(*args, **kwargs)

        mmr.score_candidate = counting
        payload = run_mmr_candidates(teacher, tok, settings, state_dir, progress=False)
    finally:
        mmr.score_candidate = original
    return payload, state_dir, after_crash, first_result, resumed


def test_mmr_resumes_without_recomputing_finished_layers(interrupted_then_resumed):
    payload, state_dir, after_crash, first_result, resumed = interrupted_then_resumed
    assert after_crash == ["layer_0000.json"]
    assert resumed == [1, 2]  # layer 0 was not recomputed ...
    assert (state_dir / "layer_0000.json").read_text() == first_result  # ... nor rewritten
    assert payload["method"] == "mmr" and sorted(payload["ranking"]) == [0, 1, 2]
    for layer, losses in payload["losses"].items():
        assert set(losses) == {"initial_loss", "final_loss"}
        assert payload["scores"][layer] == losses["final_loss"]
        assert losses["final_loss"] < losses["initial_loss"]  # the short distillation does something


def test_two_shards_merge_into_the_single_process_ranking(interrupted_then_resumed, teacher, tok, settings, tmp_path):
    single = interrupted_then_resumed[0]
    assert run_mmr_candidates(teacher, tok, settings, tmp_path, shard="0/2", progress=False) is None
    assert sorted(p.name for p in tmp_path.glob("layer_*.json")) == ["layer_0000.json", "layer_0002.json"]
    with pytest.raises(ValueError, match=r"layers \[1\] .* have no result yet"):
        merge_state_dir(tmp_path)
    merged = run_mmr_candidates(teacher, tok, settings, tmp_path, shard="1/2", progress=False)
    assert merged["ranking"] == single["ranking"]
    assert merged["scores"] == pytest.approx(single["scores"], rel=1e-5)
    assert merge_state_dir(tmp_path) == merged


def test_ranking_file_plot_and_convert_cli_accept_it(interrupted_then_resumed, teacher, tok, tmp_path):
    state_dir = interrupted_then_resumed[1]
    output = tmp_path / "mmr.json"
    assert main(["merge", "--state-dir", str(state_dir), "--output", str(output)]) == 0
    payload = read_ranking(output)
    assert read_importance(output).ranking == payload["ranking"]
    png = output.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    code = convert_main(["--teacher", str(tmp_path / "teacher"), "--output", str(tmp_path / "hybrid"),
                         "--num-mamba-layers", "1", "--importance", str(output), "--no-progress"])
    assert code == 0
    layer_types = json.loads((tmp_path / "hybrid" / "config.json").read_text())["layer_types"]
    assert [i for i, kind in enumerate(layer_types) if kind == "linear_attention"] == payload["ranking"][:1]


def test_mmr_cli_on_a_saved_teacher(teacher, tok, settings, tmp_path):
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    output = tmp_path / "one.json"
    code = main(["mmr", str(tmp_path / "teacher"), "--output", str(output), "--state-dir", str(tmp_path / "state"),
                 "--layers", "2", "--steps", "1", "--batch-size", "4", "--max-length", "48", "--data", settings.data,
                 "--eval-batches", "1", "--no-progress"])
    assert code == 0
    assert read_ranking(output)["ranking"] == [2]
    # rerunning with other settings on the same state dir is refused, not mixed
    code = main(["mmr", str(tmp_path / "teacher"), "--output", str(output), "--state-dir", str(tmp_path / "state"),
                 "--layers", "2", "--steps", "2", "--no-progress"])
    assert code == 2


def test_hybrid_candidates_are_its_attention_layers_and_errors_are_clear(tok, settings, tmp_path):
    torch.manual_seed(0)
    config = AprielH1Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, mamba_d_state=8, layer_types=["attention", "mamba", "attention"],
    )
    hybrid = AprielH1ForCausalLM(config)
    assert attention_layers(hybrid) == [0, 2]
    with pytest.raises(ValueError, match="cannot be ranked here"):
        run_mmr_candidates(hybrid, tok, settings, tmp_path / "a", layers=[1], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        run_mmr_candidates(hybrid, tok, settings, tmp_path / "b", layers=[5], progress=False)
    with pytest.raises(ValueError, match="write it as i/n"):
        run_mmr_candidates(hybrid, tok, settings, tmp_path / "c", shard="1", progress=False)
    with pytest.raises(ValueError, match="steps"):
        run_mmr_candidates(hybrid, tok, replace(settings, steps=0), tmp_path / "d", progress=False)
    with pytest.raises(FileNotFoundError, match="not an MMR state directory"):
        merge_state_dir(tmp_path / "nowhere")
