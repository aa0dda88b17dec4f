"""The whole Apriel-H1 method on a built-in tiny teacher, on a CPU, in minutes, with nothing downloaded.

1. train a tiny Mistral teacher for about a minute on the bundled synthetic reasoning traces;
2. run the staged schedule (leave-one-out ranking, then MIL-Mamba-Replacement; MIL conversion; reverse-KL
   distillation against the frozen teacher), with the paper's 25->...->40-of-50 targets scaled to its depth;
3. a short SFT pass on the last stage;
4. evaluate the teacher and every stage on held-out problems (answer accuracy, decode tokens/s);
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from model_cards.card import write_model_card  # noqa: E402
from conversion.atomic_io import write_json_atomically  # noqa: E402
from conversion.cli import UsageError, command_line  # noqa: E402
from recipes.held_out import HELD_OUT_SEED, score_on_problems, teacher_forced_scores  # noqa: E402
from recipes.schedule import MANIFEST_FILE, load_schedule_config, run_schedule  # noqa: E402
from recipes.sft import RECORD_FILE, SFTRecipe, run_sft  # noqa: E402
from recipes.synthetic import generate_problems  # noqa: E402
from recipes.tiny_teacher import TinyTeacherSpec, ensure_tiny_teacher  # noqa: E402

SCHEDULE_CONFIG = Path(__file__).parent / "configs" / "schedule_demo.yaml"
TEACHER_SPEC = TinyTeacherSpec(
    hidden_size=64, intermediate_size=192, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
    train_steps=100, time_budget_s=90.0, batch_size=16, learning_rate=3e-3, max_seq_length=256, seed=0,
)


def evaluate_models(models: dict[str, Path], tokenizer_dir: Path, num_problems: int) -> dict:
    """Accuracy and tokens/s of each model on the same held-out problems, as the card's evaluation table."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    problems = generate_problems(num_problems, HELD_OUT_SEED)
    rows = []
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path)
        score_on_problems(model, tokenizer, problems[:2], max_new_tokens=4, description=f"{name} warm-up")  # untimed
        score = {
            **asdict(score_on_problems(model, tokenizer, problems, max_new_tokens=192, batch_size=16, description=name)),
            **asdict(teacher_forced_scores(model, tokenizer, problems)),
        }
        rows.append({"model": name, "score": score, "metrics": {
            "answer accuracy": f"{score['accuracy']:.3f}", "token accuracy": f"{score['token_accuracy']:.3f}",
            "CE": f"{score['cross_entropy']:.3f}", "tokens/s": f"{score['tokens_per_s']:.1f}",
        }})
    return {
        "description": f"{num_problems} held-out synthetic problems (seed {HELD_OUT_SEED}). Answer accuracy: exact "
        "match of the final answer of a greedy completion. Token accuracy and CE: teacher-forced on the reference "
        "solutions (assistant tokens). tokens/s: batched greedy generation on this machine's CPU.",
        "columns": ["answer accuracy", "token accuracy", "CE", "tokens/s"],
        "rows": rows,
    }


def plot_summary(manifest: dict, path: Path) -> Path:
    """KD loss per stage over its steps, and accuracy / throughput of every evaluated model."""
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(12, 4.5))
    for stage in manifest["stages"]:
        steps, values = zip(*stage["kd_loss_curve"]) if stage.get("kd_loss_curve") else ((), ())
        losses.plot(steps, values, marker="o", label=f"{stage['name']}: {len(stage['mamba_layers'])} Mamba layers")
    losses.set(title="Reverse-KL distillation loss per stage", xlabel="step", ylabel="KD loss (per token)")
    losses.legend()
    rows = manifest.get("evaluation", {}).get("rows", [])
    names = [row["model"] for row in rows]
    scores.bar(names, [row["score"]["token_accuracy"] for row in rows], color="tab:blue", label="token accuracy")
    scores.bar(names, [row["score"]["accuracy"] for row in rows], color="tab:green", width=0.4, label="answer accuracy")
    scores.set(title="Held-out quality (bars) and decode tokens/s (line)", ylabel="accuracy", ylim=(0, 1))
    scores.legend(loc="lower left", framealpha=0.9)
    throughput = scores.twinx()
    throughput.plot(names, [row["score"]["tokens_per_s"] for row in rows], color="tab:red", marker="s")
    throughput.set_ylabel("tokens/s")
    scores.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary_table(manifest: dict) -> str:
    header = "model     Mamba  steps    tokens  train loss start->end  answer acc  token acc     CE  tokens/s"
    evaluation = {row["model"]: row["score"] for row in manifest.get("evaluation", {}).get("rows", [])}
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
        lines.append(
            f"{name:9} {mamba:5}  {steps:>5}  {tokens:>8}  {loss:>21}  {score.get('accuracy', float('nan')):10.3f}  "
            f"{score.get('token_accuracy', float('nan')):9.3f}  {score.get('cross_entropy', float('nan')):5.3f}  "
            f"{score.get('tokens_per_s', float('nan')):8.1f}"
        )
    return "\n".join(lines)


def run_demo(output: Path, num_problems: int = 32, sft_steps: int = 20) -> dict:
    began = time.perf_counter()
    print(f"[1/5] tiny teacher: {TEACHER_SPEC.num_hidden_layers} layers, {TEACHER_SPEC.train_steps} training steps "
          f"(at most {TEACHER_SPEC.time_budget_s:.0f} s)")
    teacher = ensure_tiny_teacher(output / "teacher", TEACHER_SPEC)
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
    parser.add_argument("--problems", type=int, default=32, help="held-out problems per evaluated model")
    args = parser.parse_args(argv)
    if args.problems < 1:
        raise UsageError(f"--problems is {args.problems}; evaluate at least one problem")
    if args.fresh and args.output.exists():
        shutil.rmtree(args.output)
    run_demo(args.output, args.problems)


if __name__ == "__main__":
    sys.exit(main())
