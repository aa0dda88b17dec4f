"""The whole Apriel-H1 method on a built-in tiny teacher, on a CPU, in minutes, with nothing downloaded.

1. take the shipped tiny Mistral teacher (``recipes/demo_teacher``, trained on the bundled synthetic reasoning
   traces by the command in ``TEACHER_COMMAND``: training one that solves problems takes longer than the whole
   demo may on 2 CPU cores);
2. run the staged schedule (leave-one-out ranking, then MIL-Mamba-Replacement; MIL conversion; reverse-KL
   distillation against the frozen teacher), with the paper's 25->...->40-of-50 targets scaled to its depth;
3. a short SFT pass on the last stage;
4. evaluate the teacher and every stage on held-out problems (answer accuracy, teacher-forced token accuracy,
   and the decode cache one sequence holds at a long context; no CPU timings, they are noise);
5. write plots, the run manifest and a model card, and print a summary table.

Every step is resumable: rerunning the command skips what is finished. ``--fresh`` starts over.

    python -m recipes.demo [--output outputs/demo] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import datasets
import matplotlib
import transformers

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from cli import UsageError, command_line  # noqa: E402
from conversion.atomic_io import write_json_atomically  # noqa: E402
from model_cards.card import write_model_card  # noqa: E402
from recipes.evaluation.decode_cache import decode_cache_bytes  # noqa: E402
from recipes.schedule import MANIFEST_FILE, load_schedule_config, run_schedule  # noqa: E402
from recipes.sft import RECORD_FILE, SFTRecipe, run_sft  # noqa: E402
from recipes.tiny_teacher import STAMP_FILE  # noqa: E402
from recipes.training.held_out import HELD_OUT_SEED, score_on_problems, teacher_forced_scores  # noqa: E402
from recipes.training.synthetic import generate_problems  # noqa: E402

# Context at which each model's decode cache is counted (the tiny teacher's positions reach 4x its rows).
CACHE_CONTEXT = 1024
SCHEDULE_CONFIG = Path(__file__).parent / "configs" / "schedule_demo.yaml"
TEACHER_DIR = Path(__file__).parent / "demo_teacher"
NUM_PROBLEMS = 128  # held-out problems per evaluated model
TEACHER_COMMAND = "python -m recipes.tiny_teacher --output recipes/demo_teacher --num-layers 6 --train-steps 6000 --seed 0"

def evaluate_models(models: dict[str, Path], tokenizer_dir: Path, num_problems: int) -> dict:
    """Exact match, teacher-forced scores and decode-cache size of each model on the same held-out problems.

    No speed is measured: on a CPU the PyTorch reference scan is a Python loop and the timings are noise. The
    decode cache a sequence holds at a long context is what a hybrid saves; it is counted, not timed.
    """
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    problems = generate_problems(num_problems, HELD_OUT_SEED)
    rows = []
    for name, path in tqdm(models.items(), desc="evaluating", unit="model"):
        model = AutoModelForCausalLM.from_pretrained(path)
        score = {
            **asdict(score_on_problems(model, tokenizer, problems, max_new_tokens=160, batch_size=num_problems,
                                       description=name, progress=False)),
            **asdict(teacher_forced_scores(model, tokenizer, problems)),
            "cache_kib": decode_cache_bytes(model, CACHE_CONTEXT) / 1024,
        }
        for timing in ("tokens_per_s", "wall_time_s"):  # CPU timings: not a result, so not kept
            score.pop(timing)
        rows.append({"model": name, "score": score, "metrics": {
            "answer accuracy": f"{score['accuracy']:.3f}", "token accuracy": f"{score['token_accuracy']:.3f}",
            "CE": f"{score['cross_entropy']:.3f}", f"decode cache at {CACHE_CONTEXT} tokens": f"{score['cache_kib']:.0f} KiB",
        }})
    return {
        "description": f"{num_problems} held-out synthetic problems (seed {HELD_OUT_SEED}). Answer accuracy: exact "
        "match of the final answer of a greedy completion. Token accuracy and CE: teacher-forced on the reference "
        f"solutions (assistant tokens). Decode cache: bytes of KV cache and Mamba state one sequence holds after "
        f"{CACHE_CONTEXT} tokens (counted, not timed).",
        "columns": ["answer accuracy", "token accuracy", "CE", f"decode cache at {CACHE_CONTEXT} tokens"],
        "rows": rows,
    }


def summary_figure(manifest: dict) -> plt.Figure:
    """KD loss per stage over its steps; held-out quality and decode-cache size of every evaluated model. Every
    legend sits outside the bars, so no model's bar is hidden, however low its scores."""
    figure, (losses, scores, cache) = plt.subplots(1, 3, figsize=(16, 4.8))
    for stage in manifest["stages"]:
        steps, values = zip(*stage["kd_loss_curve"]) if stage.get("kd_loss_curve") else ((), ())
        losses.plot(steps, values, marker="o", label=f"{stage['name']}: {len(stage['mamba_layers'])} Mamba layers")
    losses.set(title="Reverse-KL distillation loss per stage", xlabel="step", ylabel="KD loss (per token)")
    losses.legend()
    rows = manifest.get("evaluation", {}).get("rows", [])
    names = [row["model"] for row in rows]
    positions = range(len(rows))
    width = 0.4
    for offset, key, label, color in ((-width / 2, "token_accuracy", "token accuracy", "tab:blue"),
                                      (width / 2, "accuracy", "answer accuracy", "tab:green")):
        bars = scores.bar([p + offset for p in positions], [row["score"][key] for row in rows], width, color=color,
                          label=label)
        scores.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    scores.set_xticks(list(positions), names, rotation=20)
    scores.set_ylim(0, 1.05)
    scores.set_ylabel("accuracy")
    scores.set_title("Held-out quality", pad=22)
    scores.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)
    cache.bar(names, [row["score"]["cache_kib"] for row in rows], color="tab:gray")
    cache.set(title=f"Decode cache per sequence at {CACHE_CONTEXT} tokens", ylabel="KiB")
    cache.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    return figure


def plot_summary(manifest: dict, path: Path) -> Path:
    """Write :func:`summary_figure` to ``path``."""
    figure = summary_figure(manifest)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary_table(manifest: dict) -> str:
    """One row per model: training, held-out scores, and what it keeps of the teacher's answer accuracy."""
    header = (f"model     Mamba  steps    tokens  train loss start->end  answer acc  kept  token acc     CE  "
              f"cache KiB@{CACHE_CONTEXT}")
    evaluation = {row["model"]: row["score"] for row in manifest.get("evaluation", {}).get("rows", [])}
    teacher_accuracy = evaluation.get("teacher", {}).get("accuracy")
    rows = [("teacher", 0, "-", "-", "-")]
    for stage in manifest["stages"]:
        loss = f"KD {stage['initial_kd_loss']:.4f}->{stage['final_kd_loss']:.4f}"
        rows.append((stage["name"], len(stage["mamba_layers"]), stage["steps"], f"{stage['tokens']:,}", loss))
    if manifest.get("sft"):
        sft = manifest["sft"]
        rows.append(("sft", len(manifest["stages"][-1]["mamba_layers"]), sft["steps"], f"{sft['tokens']:,}",
                     f"CE {sft['final_loss']:.4f}"))
    lines = ["", header]
    for name, mamba, steps, tokens, loss in rows:
        score = evaluation.get(name, {})
        accuracy = score.get("accuracy", float("nan"))
        kept = f"{accuracy / teacher_accuracy:4.0%}" if teacher_accuracy else "   -"
        lines.append(
            f"{name:9} {mamba:5}  {steps:>5}  {tokens:>8}  {loss:>21}  {accuracy:10.3f}  {kept:>4}  "
            f"{score.get('token_accuracy', float('nan')):9.3f}  {score.get('cross_entropy', float('nan')):5.3f}  "
            f"{score.get('cache_kib', float('nan')):14.0f}"
        )
    return "\n".join(lines)


def quiet_libraries() -> None:
    """One progress bar per phase: none for each weight load, data-set map or filter, only the training bars."""
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def run_demo(output: Path, num_problems: int = NUM_PROBLEMS, sft_steps: int = 20) -> dict:
    began = time.perf_counter()
    quiet_libraries()
    teacher = TEACHER_DIR
    spec = json.loads((teacher / STAMP_FILE).read_text())
    print(f"[1/5] teacher: the shipped tiny teacher ({spec['num_hidden_layers']} layers, trained {spec['train_steps']} "
          f"steps by `{TEACHER_COMMAND}`)")
    print("[2/5] staged schedule: rank -> convert (MIL) -> distil (reverse KL), stage by stage")
    config = load_schedule_config(SCHEDULE_CONFIG, [f"teacher={teacher}", f"output_dir={output / 'schedule'}"])
    manifest = run_schedule(config)
    final_stage = Path(manifest["final_checkpoint"])
    print(f"[3/5] SFT pass ({sft_steps} steps) on {final_stage}")
    sft_dir = output / "sft"
    record_path = sft_dir / "final" / RECORD_FILE
    if record_path.is_file():
        sft = json.loads(record_path.read_text())
    else:
        sft = run_sft(SFTRecipe(model=str(final_stage), output_dir=str(sft_dir), synthetic_examples=400,
                                max_seq_length=256, learning_rate=3e-4, max_steps=sft_steps, save_steps=sft_steps,
                                logging_steps=5, per_device_train_batch_size=8, seed=1))
    manifest["sft"] = {key: sft[key] for key in ("steps", "tokens", "final_loss", "wall_time_s")}
    print("[4/5] evaluation of the teacher and every stage on held-out problems")
    models = {"teacher": teacher, **{s["name"]: Path(s["checkpoint"]) for s in manifest["stages"]}, "sft": sft_dir / "final"}
    manifest["evaluation"] = evaluate_models(models, teacher, num_problems)
    manifest_path = output / "schedule" / MANIFEST_FILE
    write_json_atomically(manifest_path, manifest)
    print("[5/5] plots and model card")
    plot = plot_summary(manifest, output / "summary.png")
    card = write_model_card(sft_dir / "final", manifest_path, repo_id="apriel-h1-demo/tiny-hybrid")
    print(summary_table(manifest))
    print(f"\nmanifest {manifest_path}\nplots    {plot} and {output / 'schedule'}/stage-*/importance_*.png\ncard     {card}")
    print(f"total wall time {time.perf_counter() - began:.0f} s")
    return manifest


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--fresh", action="store_true", help="delete the output directory first")
    parser.add_argument("--problems", type=int, default=NUM_PROBLEMS, help="held-out problems per evaluated model")
    args = parser.parse_args(argv)
    if args.problems < 1:
        raise UsageError(f"--problems is {args.problems}; evaluate at least one problem")
    if args.fresh and args.output.exists():
        shutil.rmtree(args.output)
    run_demo(args.output, args.problems)


if __name__ == "__main__":
    sys.exit(main())
