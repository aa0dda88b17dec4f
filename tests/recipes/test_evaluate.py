"""recipes/evaluate.py: a run's teacher and stages through lm-eval into one table, plot, manifest and card."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recipes import evaluate, lm_eval_cli
from recipes.lm_eval_tasks import CHOICES_TASK, SYNTHETIC_TASK

ARGS = ["--device", "cpu", "--limit", "2", "--gen-kwargs", "max_gen_toks=8", "--batch-size", "4"]


@pytest.fixture
def run_manifest(teacher_dir, student_dir, tmp_path):
    """A schedule manifest with one finished stage (synthetic: the conftest's converted student, undistilled)."""
    final = tmp_path / "final"
    shutil.copytree(student_dir, final)  # the card is written into the final checkpoint
    manifest = {
        "teacher": str(teacher_dir), "mode": "staged", "num_layers": 4, "targets": [2],
        "stages": [{"name": "stage-1", "status": "done", "checkpoint": str(student_dir), "mamba_layers": [1, 3],
                    "layers_added": [1, 3], "steps": 0, "tokens": 0}],
        "final_checkpoint": str(final),
    }
    path = tmp_path / "run" / "run_manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps(manifest))
    return path


def test_a_run_is_evaluated_into_table_plot_manifest_and_card(run_manifest, monkeypatch, capsys):
    tasks = f"{SYNTHETIC_TASK},{CHOICES_TASK}"
    assert evaluate.main(["--manifest", str(run_manifest), "--tasks", tasks, *ARGS]) == 0
    output = run_manifest.parent / "lm_eval"
    table = json.loads((output / evaluate.RESULTS_JSON).read_text())["table"]
    assert [row["model"] for row in table["rows"]] == ["teacher", "stage-1"]
    exact_match, accuracy = f"{SYNTHETIC_TASK} exact_match (answer_line)", f"{CHOICES_TASK} acc"
    assert table["columns"] == [exact_match, accuracy, f"{CHOICES_TASK} acc_norm", evaluate.THROUGHPUT]
    assert table["quality_columns"] == [exact_match, accuracy]
    for row in table["rows"]:
        assert row["quality"] == (row["scores"][exact_match] + row["scores"][accuracy]) / 2
    for row in table["rows"]:
        assert row["metrics"][evaluate.THROUGHPUT] == "not measured (no GPU)" and row["tokens_per_s"] is None
        per_model = json.loads((output / evaluate.MODELS_DIR / f"{row['model']}.json").read_text())
        assert row["scores"][f"{CHOICES_TASK} acc"] == per_model["results"][CHOICES_TASK]["acc,none"]
        assert per_model["throughput"]["generated_tokens"] > 0  # counted, but a CPU time is not a speed
    assert (output / evaluate.PLOT_FILE).stat().st_size > 0
    assert "| teacher |" in (output / evaluate.RESULTS_MD).read_text()
    manifest = json.loads(run_manifest.read_text())
    assert manifest["lm_eval"]["rows"][1]["model"] == "stage-1"
    card = (run_manifest.parent.parent / "final" / "README.md").read_text()
    assert "Evaluation with lm-evaluation-harness" in card and "| stage-1 |" in card

    def no_model_loading(*args, **kwargs):
        raise AssertionError("a finished model was evaluated again")

    monkeypatch.setattr(evaluate, "load_lm", no_model_loading)  # a rerun resumes from models/<name>.json
    assert evaluate.main(["--manifest", str(run_manifest), "--tasks", tasks, *ARGS]) == 0


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tasks", "no_such_task_anywhere"], "unknown lm-eval task(s) ['no_such_task_anywhere']"),
        (["--model", "MISSING"], "the checkpoint of missing MISSING does not exist"),
        (["--manifest", "MISSING/run_manifest.json"], "the run manifest MISSING/run_manifest.json does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(arguments, message, teacher_dir, tmp_path, capsys):
    arguments = [a.replace("MISSING", str(tmp_path / "missing")) for a in arguments]
    message = message.replace("MISSING", str(tmp_path / "missing"))
    if "--model" not in arguments and "--manifest" not in arguments:
        arguments += ["--model", str(teacher_dir)]
    assert evaluate.main([*arguments, "--output", str(tmp_path / "out"), *ARGS]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_without_lm_eval_everything_else_imports_and_evaluate_says_what_to_install(tmp_path):
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["lm_eval"] = None  # lm-eval is not installed
        import conversion, model_cards, modeling_apriel_h1, recipes
        needs_lm_eval = {"recipes.evaluation.lm_eval_model"}
        for package in (modeling_apriel_h1, conversion, model_cards, recipes):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if module.name in needs_lm_eval:
                    continue
                try:
                    importlib.import_module(module.name)
                except ModuleNotFoundError as error:  # other optional extras (mamba-ssm kernels) may be absent too
                    if error.name.split(".")[0] == "lm_eval":
                        raise
        from recipes import evaluate, lm_eval_cli
        sys.exit(evaluate.main(["--model", "unused"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == f"error: {evaluate.INSTALL_HINT}"
    cli = subprocess.run([sys.executable, "-c", "import sys; sys.modules['lm_eval'] = None\n"
                          "from recipes.lm_eval_cli import main; sys.exit(main())"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and cli.stderr.strip() == f"error: {lm_eval_cli.INSTALL_HINT}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_throughput_is_measured_and_plotted_against_quality(run_manifest):
    assert evaluate.main(["--manifest", str(run_manifest), "--tasks", SYNTHETIC_TASK, "--device", "cuda", "--limit", "8",
                          "--gen-kwargs", "max_gen_toks=64"]) == 0
    table = json.loads((run_manifest.parent / "lm_eval" / evaluate.RESULTS_JSON).read_text())["table"]
    for row in table["rows"]:
        assert row["tokens_per_s"] > 0 and row["metrics"][evaluate.THROUGHPUT].endswith("(DecodeEngine)")


def stand_in_for_lm_eval(monkeypatch) -> None:
    """lm-eval's scores replaced by fixed ones: what is tested is where they are written."""
    monkeypatch.setattr(evaluate, "load_lm", lambda *args: None)
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda lm, tasks, manager, settings: {
        "results": {CHOICES_TASK: {"acc,none": 0.25}},
        "throughput": {"tokens_per_s": None, "not_measured": "no GPU", "device": "cpu"},
    })


def test_without_a_manifest_the_results_go_under_outputs(student_dir, tmp_path, monkeypatch):
    stand_in_for_lm_eval(monkeypatch)
    student = Path(shutil.copytree(student_dir, tmp_path / "work" / "student"))  # its card is written
    monkeypatch.chdir(tmp_path / "work")
    assert evaluate.main(["--model", "student", "--tasks", CHOICES_TASK, *ARGS]) == 0
    assert sorted(path.name for path in student.parent.iterdir()) == ["outputs", "student"]
    assert (student / "README.md").is_file()
    assert (tmp_path / "work" / "outputs" / "lm_eval" / evaluate.RESULTS_JSON).is_file()


def test_the_results_go_into_the_card_of_the_model_named_with_model(run_manifest, student_dir, tmp_path, monkeypatch):
    """``--model merged=DIR`` next to ``--manifest`` (the README's step 5): DIR's card gets the table, and the run's
    final checkpoint, which was not named, keeps its files."""
    merged = tmp_path / "merged"
    shutil.copytree(student_dir, merged)
    final = json.loads(run_manifest.read_text())["final_checkpoint"]
    stand_in_for_lm_eval(monkeypatch)
    arguments = ["--manifest", str(run_manifest), "--model", f"merged={merged}", "--tasks", CHOICES_TASK, *ARGS]
    assert evaluate.main(arguments) == 0
    card = (merged / "README.md").read_text()
    assert "Evaluation with lm-evaluation-harness" in card and "| merged |" in card and "| stage-1 |" in card
    assert "## How it was made" in card  # the run's manifest went into the card too
    assert not (Path(final) / "README.md").exists()
