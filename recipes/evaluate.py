"""Evaluate the teacher and every stage of a run with lm-evaluation-harness; one table, one plot, the card.

    python -m recipes.evaluate --manifest outputs/tiny/schedule/run_manifest.json \\
        --tasks apriel_h1_synthetic,apriel_h1_choices [--limit 64] [--model sft=outputs/tiny/sft/final]
    python -m recipes.evaluate --model outputs/tiny/merged --tasks gsm8k --limit 100   # any lm-eval task

A thin layer over ``lm_eval.simple_evaluate``: each model is scored by lm-eval's own task definitions and
metrics, through the ``apriel_h1`` lm-eval model (``recipes/evaluation/lm_eval_model.py``: generation in large batches on
the fast decoder) or ``--backend hf`` (lm-eval's plain HF model). The local tasks (``recipes/lm_eval_tasks/``)
need no download. Writes to ``--output`` (default: ``lm_eval/`` beside the manifest, else ``outputs/lm_eval``):

* ``results.json`` and ``results.md``: one row per model, one column per task metric, and decode throughput;
* ``quality_vs_throughput.png`` (the paper's Fig. 4): mean task score against generated tokens/s. Throughput is
  the wall time of the generation requests, measured only on a CUDA device; on a CPU the plot shows quality
  alone and the table says "not measured";
* ``models/<name>.json``: each model's lm-eval results, so an interrupted run resumes with the next model.

The table also goes into the model card of each model named with ``--model`` (with only ``--manifest``: of
the run's final checkpoint), and with ``--manifest`` into the manifest (key ``lm_eval``). Needs the optional extra: ``pip install -e ".[eval]"``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cli import UsageError, command_line, model_source, read_json, read_json_if_present  # noqa: E402
from conversion.atomic_io import write_json_atomically, write_text_atomically  # noqa: E402
from recipes.lm_eval_tasks import LOCAL_TASKS, TASKS_DIR, require_lm_eval  # noqa: E402

INSTALL_HINT = 'recipes.evaluate needs lm-eval: pip install -e ".[eval]" (or pip install "lm-eval>=0.4.13,<0.5")'
RESULTS_JSON, RESULTS_MD, PLOT_FILE, MODELS_DIR = "results.json", "results.md", "quality_vs_throughput.png", "models"
THROUGHPUT = "decode tokens/s"
DEFAULT_OUTPUT = Path("outputs") / "lm_eval"  # without a manifest: under outputs/, as every command's outputs


def name_and_path(item: str) -> tuple[str, Path]:
    """``NAME=DIR`` (or ``DIR``, named after its last part) -> (name, directory)."""
    name, _, path = item.rpartition("=")
    return name or Path(path).name, Path(path)


def models_to_evaluate(manifest: dict[str, Any] | None, extra: list[str]) -> dict[str, Path]:
    """Name -> checkpoint: the manifest's teacher and finished stages, then ``NAME=DIR`` (or ``DIR``) extras."""
    models: dict[str, Path] = {}
    if manifest is not None:
        models["teacher"] = Path(manifest["teacher"])
        for stage in manifest.get("stages", []):
            if stage.get("status") == "done":
                models[stage["name"]] = Path(stage["checkpoint"])
    for item in extra:
        name, path = name_and_path(item)
        models[name] = path
    for name, path in models.items():
        model_source(path, what=f"checkpoint of {name}", tokenizer=True)
    if not models:
        raise UsageError("nothing to evaluate: give --manifest RUN/run_manifest.json and/or --model DIR")
    return models


def task_manager_for(tasks: list[str]):
    """lm-eval's task index with our local tasks; the ~14k built-in tasks are indexed only when asked for."""
    from lm_eval.tasks import TaskManager

    include_defaults = any(task not in LOCAL_TASKS for task in tasks)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise UsageError(
            f"unknown lm-eval task(s) {unknown}; local tasks are {list(LOCAL_TASKS)}, `lm-eval ls tasks` lists the rest"
        )
    return manager


def load_lm(backend: str, checkpoint: Path, device: str, batch_size: int, decode_batch_size: int, dtype: str):
    """The lm-eval model for one checkpoint: ours (``apriel_h1``) or lm-eval's ``hf`` with remote code."""
    if backend == "apriel_h1":
        from recipes.evaluation.lm_eval_model import AprielH1LM

        return AprielH1LM(
            pretrained=str(checkpoint), device=device, batch_size=batch_size, dtype=dtype,
            decode_batch_size=decode_batch_size,
        )
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(checkpoint), device=device, batch_size=batch_size, dtype=dtype, trust_remote_code=True)


def evaluate_checkpoint(lm, tasks: list[str], task_manager, settings: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's scores of one model, and its decode throughput where it was measured on a GPU."""
    import lm_eval

    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=task_manager, limit=settings["limit"],
        apply_chat_template=settings["chat_template"], gen_kwargs=settings["gen_kwargs"],
    )
    stats = getattr(lm, "generation_stats", None)
    unmeasured = ("no GPU" if lm.device.type != "cuda" else "--backend hf is not timed" if stats is None
                  else "no generation task" if stats["generation_wall_s"] == 0 else None)
    return {
        "results": output["results"],
        "throughput": {
            "tokens_per_s": stats["generated_tokens"] / stats["generation_wall_s"] if unmeasured is None else None,
            "not_measured": unmeasured,
            "device": str(lm.device),
            **(stats or {}),
        },
    }


def metric_columns(results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """'task metric' -> (task, lm-eval metric key) for every score (not the stderrs) of one model's results."""
    columns = {}
    for task, scores in results.items():
        for key, value in scores.items():  # scores are "metric,filter" keys; alias and sample_len are not scores
            metric, comma, filter_name = key.partition(",")
            if comma and isinstance(value, (int, float)) and not isinstance(value, bool) and not metric.endswith("_stderr"):
                columns[f"{task} {metric}" + (f" ({filter_name})" if filter_name not in ("", "none") else "")] = (task, key)
    return columns


def build_table(scored: dict[str, dict[str, Any]], tasks: list[str], limit: int | None, backend: str) -> dict[str, Any]:
    """The table in the manifest / model card shape: description, columns, rows of formatted metrics."""
    columns = metric_columns(next(iter(scored.values()))["results"])
    primary = [next(column for column, (task, _) in columns.items() if task == name) for name in tasks if
               any(task == name for task, _ in columns.values())]
    rows = []
    for name, score in scored.items():
        values = {column: score["results"][task][key] for column, (task, key) in columns.items()}
        tokens_per_s, unmeasured = score["throughput"]["tokens_per_s"], score["throughput"]["not_measured"]
        rows.append({
            "model": name,
            "scores": values,
            "quality": sum(values[column] for column in primary) / len(primary),
            "tokens_per_s": tokens_per_s,
            "not_measured": unmeasured,
            "metrics": {
                **{column: f"{value:.4f}" for column, value in values.items()},
                THROUGHPUT: f"{tokens_per_s:.1f} ({score['throughput']['decoder']})" if tokens_per_s is not None
                else f"not measured ({unmeasured})",
            },
        })
    return {
        "description": (
            f"lm-evaluation-harness ({backend} model), tasks {', '.join(tasks)}"
            + (f", first {limit} examples each" if limit else "")
            + f". Quality (the plot's y axis) is the mean of: {', '.join(primary)}. "
            f"{THROUGHPUT}: generated tokens per second of wall time over the generation requests, on a GPU only."
        ),
        "columns": [*columns, THROUGHPUT],
        "quality_columns": primary,
        "rows": rows,
    }


def markdown_table(table: dict[str, Any]) -> str:
    lines = [table["description"], "", "| model | " + " | ".join(table["columns"]) + " |",
             "| --- |" + " --- |" * len(table["columns"])]
    lines += ["| " + " | ".join([row["model"], *(row["metrics"][c] for c in table["columns"])]) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def plot_quality_vs_throughput(table: dict[str, Any], path: Path) -> Path:
    """Fig. 4: quality against throughput when every model's throughput was measured; else quality alone."""
    rows = table["rows"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    quality_label = "mean score: " + ", ".join(table["quality_columns"])
    if all(row["tokens_per_s"] is not None for row in rows):
        for row in rows:
            axes.scatter(row["tokens_per_s"], row["quality"], s=40)
            axes.annotate(row["model"], (row["tokens_per_s"], row["quality"]), textcoords="offset points", xytext=(5, 5))
        axes.set(xlabel="decode throughput (generated tokens/s, GPU)", ylabel=quality_label, title="Quality vs throughput")
    else:
        axes.bar([row["model"] for row in rows], [row["quality"] for row in rows], color="tab:blue")
        reasons = sorted({row["not_measured"] for row in rows if row["not_measured"]})
        axes.set(ylabel=quality_label, title=f"Quality (throughput not measured: {', '.join(reasons)})")
        axes.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def record_in_cards(
    table: dict[str, Any], manifest_path: Path | None, manifest: dict[str, Any] | None, named: list[Path]
) -> list[Path]:
    """Store the table in the manifest (if any) and in the model cards of the models named with ``--model`` (with
    only ``--manifest``: of the run's final checkpoint); a card keeps the manifest it was written with."""
    from model_cards.card import stored_manifest, write_card

    if manifest is not None:
        manifest["lm_eval"] = table
        write_json_atomically(manifest_path, manifest)
        final = manifest.get("final_checkpoint")
        named = named or ([Path(final)] if final and Path(final).is_dir() else [])
    return [write_card(path, {**(manifest or stored_manifest(path) or {}), "lm_eval": table}) for path in named]


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_lm_eval(INSTALL_HINT)
    tasks = [task for task in args.tasks.split(",") if task]
    manifest_path = args.manifest
    manifest = read_json(manifest_path, "run manifest") if manifest_path is not None else None
    if manifest is not None and not (isinstance(manifest, dict) and "teacher" in manifest):
        raise UsageError(f"{manifest_path} is not a run manifest (no 'teacher'); give the run_manifest.json of recipes.schedule")
    models = models_to_evaluate(manifest, args.model)
    task_manager = task_manager_for(tasks)
    output = args.output or (manifest_path.parent / "lm_eval" if manifest_path else DEFAULT_OUTPUT)
    settings = {"tasks": tasks, "limit": args.limit, "backend": args.backend, "chat_template": args.chat_template,
                "gen_kwargs": args.gen_kwargs}
    scored = {}
    for name, checkpoint in models.items():
        cached = output / MODELS_DIR / f"{name}.json"
        previous = read_json_if_present(cached)
        if previous and previous["settings"] == {**settings, "checkpoint": str(checkpoint)}:
            scored[name] = previous
            continue
        print(f"evaluating {name}: {checkpoint}", flush=True)
        lm = load_lm(args.backend, checkpoint, args.device, args.batch_size, args.decode_batch_size, args.dtype)
        scored[name] = {"settings": {**settings, "checkpoint": str(checkpoint)},
                        **evaluate_checkpoint(lm, tasks, task_manager, settings)}
        write_json_atomically(cached, scored[name])
        del lm
    table = build_table(scored, tasks, args.limit, args.backend)
    write_json_atomically(output / RESULTS_JSON, {"table": table, "models": scored})
    write_text_atomically(output / RESULTS_MD, markdown_table(table))
    plot = plot_quality_vs_throughput(table, output / PLOT_FILE)
    named = [models[name_and_path(item)[0]] for item in args.model]
    cards = record_in_cards(table, manifest_path, manifest, named)
    print(markdown_table(table))
    print(f"wrote {output / RESULTS_JSON}, {output / RESULTS_MD}, {plot}"
          + (f"; cards {', '.join(map(str, cards))}" if cards else ""))
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=None, help="run_manifest.json: evaluates the teacher and every stage")
    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR", help="another checkpoint (repeatable)")
    parser.add_argument("--tasks", default=",".join(LOCAL_TASKS), help="comma-separated lm-eval task names")
    parser.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    parser.add_argument("--gen-kwargs", default=None, help="lm-eval's generation overrides, e.g. max_gen_toks=512")
    parser.add_argument("--output", type=Path, default=None, help="where results.json/.md and the plot go")
    parser.add_argument("--backend", choices=("apriel_h1", "hf"), default="apriel_h1")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="loglikelihood batch size")
    parser.add_argument("--decode-batch-size", type=int, default=64, help="sequences decoded at once (apriel_h1)")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                        help="feed the raw task prompt (default: the tokenizer's chat template, as the models were trained)")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


@command_line
def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
