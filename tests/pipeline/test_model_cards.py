"""Model cards carry the run's real numbers; the Hub folder loads as remote code in a clean process."""

from __future__ import annotations

import json

import pytest
import torch

from model_cards.card import render_model_card, write_model_card
from model_cards.hub import prepare_hub_folder
from modeling_apriel_h1 import REMOTE_CODE_FILES, AprielH1ForCausalLM
from tests.modeling.tiny import tiny_config
from tests.remote_code import assert_remote_code_reproduces

MANIFEST = {
    "teacher": "/runs/teacher-tiny",
    "mode": "staged",
    "stages": [
        {"name": "stage-1", "target_mamba_layers": 1, "layers_added": [2], "mamba_layers": [2],
         "importance_method": "loo", "steps": 40, "tokens": 12345, "initial_kd_loss": 1.2345,
         "final_kd_loss": 0.4321, "wall_time_s": 61.7, "status": "done"},
        {"name": "stage-2", "target_mamba_layers": 2, "layers_added": [1], "mamba_layers": [1, 2],
         "importance_method": "mmr", "steps": 40, "tokens": 23456, "initial_kd_loss": 0.9876,
         "final_kd_loss": 0.5555, "wall_time_s": 70.2, "status": "done"},
    ],
    "sft": {"steps": 20, "tokens": 4567, "final_loss": 0.789},
    "evaluation": {
        "description": "Held-out synthetic problems.",
        "columns": ["accuracy", "tokens/s"],
        "rows": [{"model": "teacher", "metrics": {"accuracy": "0.812", "tokens/s": "101.5"}},
                 {"model": "stage-2", "metrics": {"accuracy": "0.734", "tokens/s": "133.9"}}],
    },
}


@pytest.fixture
def hybrid_dir(tmp_path):
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config(["attention", "mamba", "mamba", "attention"])).eval()
    model.save_pretrained(tmp_path / "hybrid")
    (tmp_path / "hybrid" / "conversion.json").write_text(
        json.dumps({"teacher": "/runs/teacher-tiny", "init_method": "mil", "package_version": "0.1.0"})
    )
    return model, tmp_path / "hybrid"


def test_card_contains_the_numbers_of_the_manifest(hybrid_dir):
    _, path = hybrid_dir
    card = render_model_card(path, MANIFEST, repo_id="me/tiny-h1")
    assert card.startswith("---\nlicense: apache-2.0")
    assert "base_model" not in card.split("---")[1] and "made with apriel-h1 from `/runs/teacher-tiny`" in card
    assert "`AMMA`" in card and "| Mamba layers | 1, 2 |" in card
    assert "| stage-1 | 1 | 2 | loo | 40 | 12,345 | 1.2345 -> 0.4321 | 62 s |" in card
    assert "| stage-2 | 2 | 1 | mmr | 40 | 23,456 | 0.9876 -> 0.5555 | 70 s |" in card
    assert "Total distillation tokens: 35,801." in card
    assert "| stage-2 | 0.734 | 133.9 |" in card
    assert "final loss 0.7890" in card
    assert 'from_pretrained("me/tiny-h1", trust_remote_code=True)' in card


def test_card_without_a_manifest_still_describes_the_model(hybrid_dir):
    _, path = hybrid_dir
    card = write_model_card(path).read_text()
    assert "How it was made" not in card and "## Architecture" in card and "2 attention, 2 Mamba" in card


def test_hub_folder_loads_as_remote_code_in_a_clean_process(hybrid_dir, tmp_path):
    model, path = hybrid_dir
    folder = prepare_hub_folder(path, tmp_path / "upload", MANIFEST, repo_id="me/tiny-h1")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "conversion.json", *REMOTE_CODE_FILES} <= names
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_apriel_h1.AprielH1ForCausalLM"
    )
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits
    assert_remote_code_reproduces(folder, ids, expected, tmp_path)


def test_hub_folder_refuses_a_directory_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        prepare_hub_folder(tmp_path / "empty", tmp_path / "upload")


def test_demo_summary_table_and_plot_show_the_manifest(tmp_path):
    from recipes.demo import plot_summary, summary_table

    manifest = json.loads(json.dumps(MANIFEST))
    for stage in manifest["stages"]:
        stage["kd_loss_curve"] = [[5, stage["initial_kd_loss"]], [10, stage["final_kd_loss"]]]
    manifest["evaluation"]["rows"] = [
        {"model": name, "metrics": {}, "score": {"accuracy": answers, "token_accuracy": accuracy, "cross_entropy": 1.5,
                                                 "cache_kib": 48.0 - 8 * i}}
        for i, (name, answers, accuracy) in enumerate(
            [("teacher", 0.40, 0.7), ("stage-1", 0.30, 0.65), ("stage-2", 0.20, 0.61), ("sft", 0.10, 0.66)]
        )
    ]
    table = summary_table(manifest)
    assert "KD 1.2345->0.4321" in table and "12,345" in table and "0.610" in table and "CE 0.7890" in table
    assert "tokens/s" not in table
    stage_2 = next(line for line in table.splitlines() if line.startswith("stage-2"))
    assert " 50% " in stage_2 and stage_2.split()[-1] == "32"  # keeps half the teacher's answers; 48 - 16 KiB
    path = plot_summary(manifest, tmp_path / "summary.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_demo_summary_legends_hide_no_bar(tmp_path):
    """The demo's real shape of results: a teacher far ahead and stages with low answer accuracy (0.148, 0.109, 0)."""
    from recipes.demo import summary_figure

    stages = [{"name": f"stage-{i}", "mamba_layers": list(range(i + 2)), "kd_loss_curve": [[5, 1.5], [80, 0.7]]}
              for i in (1, 2, 3)]
    rows = [{"model": name, "score": {"accuracy": answers, "token_accuracy": tokens, "cache_kib": 40.0}}
            for name, answers, tokens in [("teacher", 0.68, 0.93), ("stage-1", 0.148, 0.80), ("stage-2", 0.109, 0.78),
                                          ("stage-3", 0.0, 0.70), ("sft", 0.05, 0.75)]]
    figure = summary_figure({"stages": stages, "evaluation": {"rows": rows}})
    renderer = figure.canvas.get_renderer()
    for axes in figure.axes:
        legend = axes.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        bars = [patch for patch in axes.patches if patch.get_height() > 0]
        hidden = [patch.get_x() for patch in bars if box.overlaps(patch.get_window_extent(renderer))]
        assert not hidden, f"the legend of {axes.get_title()!r} covers the bars at x = {hidden}"


def test_card_of_a_released_layout_directory_reads_its_hybrid_block_layout(tmp_path):
    """A directory in the release's ``apriel_h`` layout (synthetic, tests/modeling/release_format.py) has no
    ``layer_types`` in its config.json: the pattern comes from ``hybrid_block_layout``, the widths from ssm_cfg."""
    from modeling_apriel_h1 import AprielHConfig
    from tests.modeling.release_format import RELEASED, random_released_weights, write_released_dir

    path = write_released_dir(tmp_path / "released", RELEASED, random_released_weights(AprielHConfig(**RELEASED)))
    card = write_model_card(path).read_text()
    assert "`AMMA`" in card and "| Mamba layers | 1, 2 |" in card and "2 attention, 2 Mamba" in card


def test_a_released_layout_directory_goes_to_the_hub_with_our_remote_code(tmp_path):
    """The released apriel_h layout (synthetic, tests/modeling/release_format.py) keeps its layout on the Hub and
    loads there as remote code through our AprielHForCausalLM."""
    from modeling_apriel_h1 import AprielHConfig, AprielHForCausalLM
    from tests.modeling.release_format import RELEASED, random_released_weights, write_released_dir

    path = write_released_dir(tmp_path / "released", RELEASED, random_released_weights(AprielHConfig(**RELEASED)))
    folder = prepare_hub_folder(path, tmp_path / "upload")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "apriel_h" and config["hybrid_block_layout"] == ["t", "m2", "m2", "t"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_apriel_h1.AprielHForCausalLM"
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        expected = AprielHForCausalLM.from_pretrained(path).eval()(ids).logits
    assert_remote_code_reproduces(folder, ids, expected, tmp_path)


def test_the_hub_dry_run_keeps_the_cards_run_and_names_no_local_path_as_base_model(hybrid_dir, tmp_path):
    """The README's step 4: ``model_cards.card --manifest`` then ``model_cards.hub --dry-run`` without it."""
    from model_cards.hub import main as hub_main

    _, path = hybrid_dir
    manifest_path = tmp_path / "run_manifest.json"
    manifest_path.write_text(json.dumps(MANIFEST))
    write_model_card(path, manifest_path)
    assert hub_main(["--model", str(path), "--repo-id", "me/tiny-h1", "--dry-run", str(tmp_path / "up")]) is None
    card = (tmp_path / "up" / "README.md").read_text()
    assert "## How it was made" in card and "| stage-2 | 2 | 1 | mmr |" in card and "SFT: 20 steps" in card
    assert 'from_pretrained("me/tiny-h1"' in card
    front_matter = card.split("---")[1]
    assert "base_model" not in front_matter and "/runs/teacher-tiny" not in front_matter
    assert not (tmp_path / "up" / "card_manifest.json").exists()  # local paths stay on this machine


@pytest.mark.parametrize("teacher, base_model", [
    ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1"),
    ("/runs/teacher-tiny", None),
    ("outputs/tiny/teacher", None),
])
def test_base_model_is_the_teachers_hub_id_or_absent(hybrid_dir, teacher, base_model):
    _, path = hybrid_dir
    card = render_model_card(path, {**MANIFEST, "teacher": teacher}, repo_id="me/tiny-h1")
    front_matter = card.split("---")[1]
    if base_model:
        assert f"base_model: {base_model}\n" in front_matter
    else:
        assert "base_model" not in front_matter


def test_a_later_stage_does_not_name_the_previous_stage_as_its_teacher(hybrid_dir):
    """A staged run converts stage 2 from stage 1's hybrid; without the manifest the transformer is unknown."""
    _, path = hybrid_dir
    (path / "conversion.json").write_text(json.dumps({
        "teacher": "outputs/tiny/schedule/stage-1/distill/final", "init_method": "mil", "package_version": "0.1.0",
        "ancestor_config_sha256s": ["0" * 64],
    }))
    card = render_model_card(path, repo_id="me/tiny-h1")
    assert "stage-1/distill/final" not in card and "from a transformer teacher" in card
