"""The method study: its verdict rule, what each ablation arm changes, and the whole pipeline at micro scale."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import method_study, study_report  # noqa: E402
from benchmarks.study_report import compare  # noqa: E402


def test_verdicts_follow_the_numbers():
    assert compare([0.80, 0.82], [0.60, 0.62], problems=256) == "confirmed"
    assert compare([0.60, 0.62], [0.80, 0.82], problems=256) == "not confirmed"
    assert compare([0.80, 0.60], [0.70, 0.71], problems=256) == "inconclusive"  # the seeds overlap
    assert compare([0.51, 0.52], [0.50, 0.505], problems=256) == "inconclusive"  # within sampling noise
    assert compare([0.0, 0.0], [0.0, 0.0], problems=4) == "inconclusive"
    assert compare([0.5], [], problems=4) == "not run"


def _score(exact_match: float) -> dict:  # synthetic result rows, shaped as score_model writes them
    return {"exact_match": exact_match, "token_accuracy": 0.9, "cross_entropy": 0.3, "num_problems": 256,
            "mamba_layers": 4, "num_layers": 8, "decode_cache_bytes": 4096, "cache_context": 4096, "device": "cpu"}


def test_claims_table_is_computed_from_the_result_files(tmp_path):
    (tmp_path / "teacher.json").write_text(json.dumps({"command": "c", "spec": {"seed": 0}, "train_wall_time_s": 1.0,
                                                       "score": _score(0.75)}))
    rows = [{"model": "stage-3-merged", "step": "merged", "tokens": 10, "mamba": 4, **_score(0.70)}]
    (tmp_path / "recipe.json").write_text(json.dumps({"rows": rows, "stages": []}))
    for arm, values in {"recipe": (0.6, 0.62), "forward_kl": (0.4, 0.42), "one_shot": (0.7, 0.72)}.items():
        for seed, value in enumerate(values):
            path = tmp_path / "ablations" / arm / f"seed-{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"arm": arm, "seed": seed, "tokens": 100, **_score(value)}))
    verdicts = {claim: verdict for claim, verdict, _ in study_report.claims_rows(study_report.load_results(tmp_path))}
    assert verdicts["the teacher solves >= 70% of held-out problems"] == "met"
    assert verdicts["at 50% Mamba the final model keeps >= 90% of the teacher's exact match"] == "confirmed"  # 0.70/0.75
    assert verdicts["reverse-KL distillation beats forward KL (same token budget)"] == "confirmed"
    assert verdicts["staged conversion beats one-shot conversion to the final ratio (same token budget)"] == "not confirmed"
    assert verdicts["MIL initialisation of the Mamba layers beats random initialisation (same token budget)"] == "not run"


def test_one_speed_per_layout_tokens_summed_over_stages_and_results_kept_beside_the_page(tmp_path):
    output = tmp_path / "study"
    output.mkdir()
    (output / "teacher.json").write_text(json.dumps({"command": "c", "spec": {"seed": 0}, "train_wall_time_s": 1.0,
                                                     "training": {"steps": 1234, "epochs": 2.5},
                                                     "score": {**_score(0.8), "mamba_layers": 0}}))
    rows = [{"model": name, "step": step, "tokens": tokens, "mamba": mamba, **_score(0.7), "mamba_layers": mamba}
            for name, step, tokens, mamba in (("stage-1", "distilled", 10, 4), ("stage-1-sft", "sft", 10, 4),
                                              ("stage-1-merged", "merged", 10, 4), ("stage-2", "distilled", 20, 6))]
    stages = [{"name": name, "tokens": tokens, "layers_added": [0], "importance_method": "loo",
               "initial_kd_loss": 1.0, "final_kd_loss": 0.5} for name, tokens in (("stage-1", 10), ("stage-2", 20))]
    (output / "recipe.json").write_text(json.dumps({"rows": rows, "stages": stages}))
    layouts = [{"model": name, "mamba_layers": mamba, "num_layers": 8, "decode_tokens_per_s": speed}
               for name, mamba, speed in (("teacher", 0, 100.0), ("stage-1", 4, 200.0), ("stage-2", 6, 300.0))]
    (output / "speeds.json").write_text(json.dumps({"device": "GPU", "batch": 2, "prompt_tokens": 16,
                                                    "new_tokens": 4, "layouts": layouts}))
    results = study_report.load_results(output)
    assert study_report.layout_speeds(results) == {0: 100.0, 4: 200.0, 6: 300.0}

    doc = tmp_path / "docs" / "study.md"
    study_report.write_report(output, doc)
    page = doc.read_text()
    assert "| stage-1-merged | 4/8 | 10 | 0.700 | 87% | 0.900 | 0.300 | 4 | 200 |" in page  # its layout's speed
    assert "| stage-2 | 6/8 | 30 |" in page  # its own 20 tokens after stage-1's 10
    assert "trained 1,234 steps (2.50 epochs)" in page and "batch 2, 16-token prompts, 4 new tokens" in page
    assert (tmp_path / "docs" / "study_quality_vs_speed.png").stat().st_size > 0
    kept = tmp_path / "docs" / "study_results"
    assert json.loads((kept / "recipe.json").read_text())["rows"] == rows
    assert json.loads((kept / "speeds.json").read_text())["layouts"] == layouts
    study_report.write_report(kept, doc)  # the page regenerates from the kept copy alone
    assert doc.read_text() == page


def test_each_arm_changes_only_its_own_setting_at_the_same_token_budget(tmp_path):
    from recipes.tiny_teacher import ensure_tiny_teacher

    size = replace(method_study.SIZES["smoke"], distill_steps=10)
    ensure_tiny_teacher(method_study.teacher_dir(tmp_path), size.teacher)
    targets = size.ablation_targets

    def config(changes):
        return method_study.schedule_config(tmp_path, tmp_path / "run", size, targets, 0, changes)

    recipe = config({})
    assert (recipe.one_shot, recipe.mamba_init, recipe.later_importance) == (False, "mil", "mmr")
    assert "loss" not in recipe.distill and "trainable" not in recipe.distill  # the config file's: reverse KL, all
    assert config({"one_shot": True}).distill["max_steps"] == size.distill_steps * len(targets)
    assert config({"distill.loss": "forward_kl"}).distill["loss"] == "forward_kl"
    assert config({"mamba_init": "random"}).mamba_init == "random"
    answers = config({"distill.data": "answers_only"})
    rows = [json.loads(line) for line in Path(answers.distill["data"]).read_text().splitlines()]
    assert len(rows) == size.distill_examples and rows[0]["messages"][1]["content"].startswith("Answer: ")
    assert answers.distill["max_steps"] > size.distill_steps  # shorter rows: more steps for the same tokens


@pytest.mark.slow
def test_the_study_runs_end_to_end_at_micro_scale_and_resumes(tmp_path):
    output, doc = tmp_path / "study", tmp_path / "docs" / "study.md"
    for part in ("teacher", "recipe"):
        method_study.run(part, output, "smoke", doc)
    method_study.run("ablations-b", output, "smoke", doc, arms={"recipe", "random_init"}, seeds=(0,))
    method_study.run("speed", output, "smoke", doc)
    method_study.run("report", output, "smoke", doc)
    recipe = json.loads((output / "recipe.json").read_text())
    assert [row["model"] for row in recipe["rows"]] == ["stage-1", "stage-2", "stage-2-sft", "stage-2-merged"]
    speeds = json.loads((output / "speeds.json").read_text())
    assert [(row["model"], row["mamba_layers"]) for row in speeds["layouts"]] == [("teacher", 0), ("stage-1", 1),
                                                                                  ("stage-2", 2)]
    assert all(row["decode_tokens_per_s"] is None for row in speeds["layouts"])  # no CPU timing is kept as a speed
    teacher = json.loads((output / "teacher.json").read_text())
    assert teacher["training"]["steps"] == method_study.SIZES["smoke"].teacher.train_steps
    random_init = json.loads((output / "ablations" / "random_init" / "seed-0.json").read_text())
    assert random_init["tokens"] > 0 and random_init["mamba_layers"] == size_final_mamba()
    page = doc.read_text()
    assert "| MIL initialisation of the Mamba layers beats random initialisation (same token budget) |" in page
    assert "| reverse-KL distillation beats forward KL (same token budget) | not run |" in page
    before = (output / "recipe.json").stat().st_mtime_ns
    method_study.run("recipe", output, "smoke", doc)  # everything is on disk: a rerun only rereads it
    assert json.loads((output / "recipe.json").read_text()) == recipe and before <= (output / "recipe.json").stat().st_mtime_ns


def size_final_mamba() -> int:
    return method_study.SIZES["smoke"].ablation_targets[-1]


def test_the_speed_part_before_the_training_parts_is_one_clear_error(tmp_path, capsys):
    assert method_study.main(["--part", "speed", "--size", "smoke", "--output", str(tmp_path / "study")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the speed part times the teacher") and "--part recipe" in error
    assert not (tmp_path / "study").exists()


def test_the_side_by_side_runs_are_every_arm_at_every_seed_once(capsys):
    size = method_study.SIZES["gpu"]
    runs = method_study.side_by_side_runs(size)
    arms = {method_study.BASELINE} | {arm for changes in method_study.ABLATIONS.values() for arm in changes}
    assert sorted((arm, seed) for _, arm, seed in runs) == sorted((arm, seed) for arm in arms for seed in size.seeds)
    assert all(arm == method_study.BASELINE or arm in method_study.ABLATIONS[part] for part, arm, _ in runs)
    assert method_study.main(["--list-runs", "--size", "gpu"]) == 0  # no CUDA needed just to list them
    assert capsys.readouterr().out.splitlines() == [f"{part} {arm} {seed}" for part, arm, seed in runs]
