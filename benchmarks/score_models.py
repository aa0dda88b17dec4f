"""Score checkpoints on the method study's quality measures against their teacher, on a CPU or a GPU.

For each model: KL(model || teacher) and KL(teacher || model) per assistant token of the reference solutions of
held-out synthetic problems, the model's cross-entropy and top-1 accuracy on them, and perplexity on held-out real
English text (``recipes.training.real_text``: the last tenth of pydoc's topics); with ``--exact-match``, the share of
those problems a greedy ``generate()`` answers exactly. The teacher is scored too, as the reference row.

    python benchmarks/score_models.py --teacher outputs/smollm2/teacher \
        --model traces=outputs/mix/traces/stage-1/distill/final --model mix=outputs/mix/mix/stage-1/distill/final \
        --problems 64 --real-text-tokens 4096 --json scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import modeling_apriel_h1  # noqa: E402,F401  (registers apriel_h1 with the Auto classes)
from benchmarks.study_scores import real_text_perplexity, teacher_forced_scores  # noqa: E402
from recipes.training.real_text import held_out_real_text  # noqa: E402
from cli import UsageError, command_line, model_source  # noqa: E402
from conversion.atomic_io import write_json_atomically  # noqa: E402
from recipes.training.held_out import HELD_OUT_SEED, score_on_problems  # noqa: E402
from recipes.training.synthetic import generate_problems  # noqa: E402


def named_model(text: str) -> tuple[str, str]:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise UsageError(f"--model {text}: give NAME=DIR, e.g. --model stage-1=outputs/run/stage-1/distill/final")
    return name, model_source(path, f"model {name}")


def score(model, teacher, tokenizer, args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    problems = generate_problems(args.problems, HELD_OUT_SEED)
    forced = teacher_forced_scores(model, tokenizer, problems, teacher if teacher is not model else None)
    text = held_out_real_text()
    perplexity = real_text_perplexity(model, tokenizer, text.text, args.real_text_tokens)
    record = {
        "kl_to_teacher": forced.kl_to_teacher or 0.0, "forward_kl_to_teacher": forced.forward_kl_to_teacher or 0.0,
        "cross_entropy": forced.cross_entropy, "token_accuracy": forced.token_accuracy,
        "scored_tokens": forced.num_tokens, "real_text_perplexity": perplexity["perplexity"],
        "real_text_tokens": perplexity["tokens"], "real_text": text.description, "real_text_sha256": text.sha256,
        "mamba_layers": len(getattr(model.config, "mamba_layer_indices", ())),
    }
    if args.exact_match:
        record["exact_match"] = score_on_problems(model, tokenizer, problems, args.max_new_tokens,
                                                  batch_size=16, description="greedy answers").accuracy
    record["score_wall_time_s"] = time.perf_counter() - began
    return record


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the teacher's directory (its tokenizer scores every model)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model to score (repeat)")
    parser.add_argument("--problems", type=int, default=64, help="held-out problems (default 64)")
    parser.add_argument("--real-text-tokens", type=int, default=4096, help="held-out real-text tokens (default 4096)")
    parser.add_argument("--exact-match", action="store_true", help="also greedy-answer the problems (slow on a CPU)")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--json", type=Path, required=True, help="where the scores go (written atomically)")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.real_text_tokens < 2:
        raise UsageError("--problems must be at least 1 and --real-text-tokens at least 2")
    models = [("teacher", model_source(args.teacher, "teacher", tokenizer=True))] + [named_model(m) for m in args.model]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(models[0][1])
    teacher = AutoModelForCausalLM.from_pretrained(models[0][1], dtype=torch.float32).to(device).eval()
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "models": {}}
    for name, path in models:
        model = teacher if name == "teacher" else AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32).to(device).eval()
        results["models"][name] = {"path": path, **score(model, teacher, tokenizer, args)}
        row = results["models"][name]
        print(f"{name}: KL {row['kl_to_teacher']:.4f}, token accuracy {row['token_accuracy']:.4f}, real-text "
              f"perplexity {row['real_text_perplexity']:.2f}"
              + (f", exact match {row['exact_match']:.3f}" if "exact_match" in row else ""), flush=True)
        write_json_atomically(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
