"""docs/study.md from the method study's result files: tables, the quality-vs-speed plot, and the claims table.

Every verdict is computed here from the numbers, never written by hand. An ablation claim "the recipe's choice
beats the alternative" is

* confirmed when every seed of the recipe scores above every seed of the alternative and the difference of
  the means exceeds two standard errors of a difference of two exact-match rates (binomial, pooled);
* not confirmed when the same holds the other way round (the alternative wins);
* inconclusive otherwise (the seeds overlap, or the difference is within sampling noise at this scale).

Threshold claims (teacher >= 70%, >= 90% of the teacher kept at 50% Mamba) are met or not met.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.study_files import RECIPE_FILE, SPEEDS_FILE, TEACHER_FILE  # noqa: E402
from cli import read_json_if_present  # noqa: E402

COMMANDS = """```bash
# one H200; each part resumes from what the earlier ones wrote under outputs/study (rerun a part to continue it)
python benchmarks/method_study.py --part teacher       # train + score the teacher (alone: its budget is wall-clock)
python benchmarks/method_study.py --part recipe        # LOO/MMR, MIL, staged reverse KL 25->75%, SFT, merge
python benchmarks/method_study.py --part ablations-a   # recipe arm + forward KL + one-shot, 2 seeds each
python benchmarks/method_study.py --part ablations-b   # LOO-only ranking + random init, 2 seeds each
python benchmarks/method_study.py --part ablations-c   # answers-only data + Mamba-only training, 2 seeds each
python benchmarks/method_study.py --part speed         # decode throughput per layout, alone on the GPU
python benchmarks/method_study.py --part report        # this page and its plot, from the JSON files
# the recipe and the ablation parts may run side by side (one process per arm and seed: --arms A --seeds N)
```"""
SPEED_NOTE = (
    "Decode tokens/s (`--part speed`, alone on the GPU after the training parts): the package's decode engine (CUDA "
    "graphs) on {device}, batch {batch}, {prompt_tokens}-token prompts, {new_tokens} new tokens, prefill included, "
    "median of 3 after a warm-up; one model per layout (the teacher and each distilled stage: a stage's SFT and "
    "merge run the same kernels on the same shapes). Models this small are bound by the latency of each layer's "
    "kernels rather than by memory traffic, so these ratios are not the 15B ones: those are in "
    "`benchmarks/RESULTS.md` (decode engine).")
TEACHER_GOAL = 0.70
KEPT_GOAL = 0.90
# (arm, what the recipe does, what the alternative does) for every ablation the study runs.
CLAIMS = (
    ("forward_kl", "reverse-KL distillation", "forward KL"),
    ("one_shot", "staged conversion", "one-shot conversion to the final ratio"),
    ("loo_only", "MMR ranking at the high ratios", "LOO ranking at every stage"),
    ("random_init", "MIL initialisation of the Mamba layers", "random initialisation"),
    ("answers_only", "reasoning traces as distillation data", "answers-only data"),
    ("mamba_only", "training all parameters", "training the Mamba layers only"),
)


def compare(recipe: list[float], alternative: list[float], problems: int) -> str:
    """Verdict on "recipe beats alternative" from per-seed exact-match rates on ``problems`` problems each."""
    if not recipe or not alternative:
        return "not run"
    pooled = statistics.mean(recipe + alternative)
    standard_error = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / (problems * len(recipe)) + 1 / (problems * len(alternative))))
    difference = statistics.mean(recipe) - statistics.mean(alternative)
    if min(recipe) > max(alternative) and difference > 2 * standard_error:
        return "confirmed"
    if min(alternative) > max(recipe) and -difference > 2 * standard_error:
        return "not confirmed"
    return "inconclusive"


def load_results(output: Path) -> dict:
    ablations: dict[str, list[dict]] = {}
    for path in sorted((output / "ablations").glob("*/seed-*.json")):
        result = json.loads(path.read_text())
        ablations.setdefault(result["arm"], []).append(result)
    return {"teacher": read_json_if_present(output / TEACHER_FILE), "recipe": read_json_if_present(output / RECIPE_FILE), "ablations": ablations,
            "speeds": read_json_if_present(output / SPEEDS_FILE)}


def result_files(output: Path) -> list[Path]:
    """The files the report reads, relative to ``output``: the teacher's and the recipe's records and one file per
    ablation arm and seed (the models and checkpoints beside them are not needed)."""
    files = [Path(name) for name in (TEACHER_FILE, RECIPE_FILE, SPEEDS_FILE) if (output / name).is_file()]
    return files + sorted(path.relative_to(output) for path in (output / "ablations").glob("*/seed-*.json"))


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} (range {min(values):.3f}-{max(values):.3f}, {len(values)} seeds)"


def claims_rows(results: dict) -> list[tuple[str, str, str]]:
    """(claim, verdict, the numbers) for every claim of the study."""
    rows = []
    teacher = results["teacher"]
    teacher_em = teacher["score"]["exact_match"] if teacher else None
    if teacher:
        rows.append((f"the teacher solves >= {TEACHER_GOAL:.0%} of held-out problems",
                     "met" if teacher_em >= TEACHER_GOAL else "not met", f"exact match {teacher_em:.3f}"))
    recipe = results["recipe"]
    if recipe and teacher:
        half = [row for row in recipe["rows"] if 2 * row["mamba"] == row["num_layers"]]
        final = [row for row in half if row["step"] == "merged"] or [row for row in half if row["step"] == "distilled"]
        if final:
            kept = final[0]["exact_match"] / teacher_em if teacher_em else 0.0
            others = "".join(f"; {row['model']} {row['exact_match']:.3f} ({row['exact_match'] / teacher_em:.0%})"
                             for row in half if row is not final[0] and teacher_em)
            rows.append((f"at 50% Mamba the final model keeps >= {KEPT_GOAL:.0%} of the teacher's exact match",
                         "confirmed" if kept >= KEPT_GOAL else "not confirmed",
                         f"{final[0]['model']}: {final[0]['exact_match']:.3f} vs teacher {teacher_em:.3f} ({kept:.0%})"
                         f"{others}"))
    baseline = results["ablations"].get("recipe", [])
    for arm, ours, theirs in CLAIMS:
        runs = results["ablations"].get(arm, [])
        ours_em = [run["exact_match"] for run in baseline]
        theirs_em = [run["exact_match"] for run in runs]
        problems = (baseline or runs or [{"num_problems": 1}])[0]["num_problems"]
        verdict = compare(ours_em, theirs_em, problems)
        numbers = (f"{ours}: {_spread(ours_em)}; {theirs}: {_spread(theirs_em)}" if ours_em and theirs_em else "-")
        rows.append((f"{ours} beats {theirs} (same token budget)", verdict, numbers))
    return rows


def layout_speeds(results: dict) -> dict[int, float]:
    """Decode tokens/s per layout (number of Mamba layers), from the speed part's measurements; layouts it timed
    on a CPU (null) are left out, never shown as a speed."""
    layouts = (results.get("speeds") or {}).get("layouts", [])
    return {row["mamba_layers"]: row["decode_tokens_per_s"] for row in layouts if row["decode_tokens_per_s"]}


def _teacher_and_recipe_scores(results: dict) -> list[tuple[str, dict]]:
    """(name, score) of the teacher and of every recipe model, in the table's order."""
    scores = [("teacher", results["teacher"]["score"])] if results["teacher"] else []
    return scores + [(row["model"], row) for row in (results["recipe"] or {}).get("rows", [])]


def plot_quality_vs_speed(results: dict, path: Path) -> Path | None:
    """Exact match against decode throughput (CUDA) for the teacher and every recipe model (paper Fig. 4)."""
    speeds = layout_speeds(results)
    points = [(name, score) for name, score in _teacher_and_recipe_scores(results) if score["mamba_layers"] in speeds]
    if not points:
        return None  # no CUDA throughput measured: nothing honest to plot
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, score in points:
        speed = speeds[score["mamba_layers"]]
        axes.scatter(speed, score["exact_match"], color="tab:red" if name == "teacher" else "tab:blue")
        axes.annotate(f"{name} ({score['mamba_layers']}/{score['num_layers']})", (speed, score["exact_match"]),
                      fontsize=7, xytext=(3, 3), textcoords="offset points")
    device = results["speeds"]["device"]
    axes.set(xlabel=f"decode tokens/s of the layout (decode engine, {device})", ylabel="exact match (held-out)",
             title="Quality vs decode throughput (Mamba layers / layers)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _score_cells(row: dict, teacher_em: float | None, speeds: dict[int, float]) -> str:
    kept = f"{row['exact_match'] / teacher_em:.0%}" if teacher_em else "-"
    speed = f"{speeds[row['mamba_layers']]:,.0f}" if row["mamba_layers"] in speeds else "-"
    return (f"{row['exact_match']:.3f} | {kept} | {row['token_accuracy']:.3f} | {row['cross_entropy']:.3f} | "
            f"{row['decode_cache_bytes'] / 1024:,.0f} | {speed}")


def cumulative_tokens(recipe: dict) -> dict[str, int]:
    """Distillation tokens each recipe stage's model has been trained on, its own and every earlier stage's."""
    total, so_far = 0, {}
    for stage in recipe["stages"]:
        total += stage["tokens"]
        so_far[stage["name"]] = total
    return so_far


def render(results: dict, plot: Path | None, doc: Path) -> str:
    lines = ["# Does the method work? A small-scale study", "",
             "Generated by `python benchmarks/method_study.py --part report` from the study's result files; do not "
             "edit by hand (up to the section on a real teacher, which is written from `docs/study_results_smollm2/` "
             "and kept when this page is regenerated). Parts and commands: `benchmarks/method_study.py`. Verdict "
             "rules: `benchmarks/study_report.py`.", "", COMMANDS, ""]
    teacher = results["teacher"]
    if not teacher:
        lines += ["No part of the study has run yet: run the parts above on a GPU, then the report part.", ""]
        return "\n".join(lines)
    score = teacher["score"]
    teacher_em = score["exact_match"]
    training = teacher.get("training")
    ran = f"{training['steps']:,} steps ({training['epochs']:.2f} epochs) in " if training else ""
    lines += ["## Teacher", "", f"Command: `{teacher['command']}` (seed {teacher['spec']['seed']}), trained "
              f"{ran}{teacher['train_wall_time_s']:.0f} s with its data preparation on {score['device']}. "
              f"Spec: `{json.dumps(teacher['spec'])}`"
              + (" (training ends after `train_steps` steps or `time_budget_s` seconds, whichever comes first)."
                 if teacher["spec"].get("time_budget_s") else "."), "",
              f"Exact match {teacher_em:.3f} on {score['num_problems']} held-out problems.", ""]
    header = ("| model | Mamba layers | distillation tokens so far | exact match | kept | token acc | CE | "
              f"decode cache KiB at {score['cache_context']} tokens | decode tokens/s of the layout |")
    recipe = results["recipe"]
    speeds = layout_speeds(results)
    if recipe:
        so_far = cumulative_tokens(recipe)
        lines += ["## The recipe, every stage", "", header, "|" + " --- |" * 9,
                  f"| teacher | 0/{score['num_layers']} | - | {_score_cells(score, teacher_em, speeds)} |"]
        for row in recipe["rows"]:
            stage = row["model"].removesuffix(f"-{row['step']}")
            lines.append(f"| {row['model']} | {row['mamba']}/{row['num_layers']} | {so_far.get(stage, row['tokens']):,} | "
                         f"{_score_cells(row, teacher_em, speeds)} |")
        lines += ["", "Stages: " + "; ".join(f"{s['name']} added {s['layers_added']} ({s['importance_method']}), "
                                              f"KD {s['initial_kd_loss']:.3f} -> {s['final_kd_loss']:.3f}"
                                              for s in recipe["stages"]), ""]
    if speeds:
        note = results["speeds"].get("note")  # where a record was measured otherwise than by the speed part
        lines += [SPEED_NOTE.format(**results["speeds"]) + (f" {note}" if note else ""), ""]
    if plot:
        lines += [f"![quality vs speed]({plot.relative_to(doc.parent) if plot.is_relative_to(doc.parent) else plot})", ""]
    if results["ablations"]:
        lines += ["## Ablations (final model of the ablation schedule, same token budget)", "",
                  "| arm | seeds | exact match | token acc | tokens |", "| --- | --- | --- | --- | --- |"]
        for arm, runs in results["ablations"].items():
            lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in runs)} | "
                         f"{_spread([r['exact_match'] for r in runs])} | "
                         f"{statistics.mean(r['token_accuracy'] for r in runs):.3f} | "
                         f"{', '.join(format(r['tokens'], ',') for r in runs)} |")
        lines.append("")
    lines += ["## Claims", "", "| claim | verdict | numbers |", "| --- | --- | --- |"]
    lines += [f"| {claim} | {verdict} | {numbers} |" for claim, verdict, numbers in claims_rows(results)]
    return "\n".join(lines) + "\n"


# The page's sections from this heading on report the study on a real teacher (``--teacher smollm2``, results in
# ``docs/study_results_smollm2/``); regenerating the small study's sections keeps them as they are.
KEPT_SECTION_HEADING = "## A real teacher: SmolLM2-135M-Instruct"


def write_report(output: Path, doc: Path) -> Path:
    """The page, its plot, and a copy of the result files it was computed from beside it (``<doc>_results/``:
    the page can be regenerated from them with ``--output``, without the models and checkpoints)."""
    results = load_results(output)
    doc.parent.mkdir(parents=True, exist_ok=True)
    kept = doc.with_name(doc.stem + "_results")
    if kept.resolve() != output.resolve():
        for relative in result_files(output):
            (kept / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(output / relative, kept / relative)
    plot = plot_quality_vs_speed(results, doc.with_name(doc.stem + "_quality_vs_speed.png"))
    kept_sections = ""
    if doc.is_file() and KEPT_SECTION_HEADING in doc.read_text():  # written from another study's results
        kept_sections = doc.read_text()[doc.read_text().index(KEPT_SECTION_HEADING):]
    page = render(results, plot, doc)
    doc.write_text(page + ("\n" + kept_sections if kept_sections else ""))
    return doc
