"""Command line of layer-importance estimation; every subcommand writes a ranking JSON and its plot.

    python -m recipes.importance loo MODEL --output loo.json [--choices mmlu.jsonl | --text FILE] [--metric M]
    python -m recipes.importance mmr MODEL --output mmr.json --state-dir DIR [--steps 100] [--shard i/n]
    python -m recipes.importance merge --state-dir DIR --output mmr.json
    python -m recipes.importance plot RANKING.json [--plot FILE.png]

The plot goes next to the ranking (same name, ``.png``) unless ``--plot`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cli import UsageError, command_line, existing_path, looks_like_hub_id, model_source
from recipes.importance.plots import plot_ranking
from recipes.importance.ranking import ranking_payload, read_ranking, write_ranking


def parse_layers(text: str | None) -> list[int] | None:
    """``"3,5,10-12"`` -> [3, 5, 10, 11, 12]; None -> None (all candidates)."""
    if text is None:
        return None
    layers = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                first, last = part.split("-")
                layers.extend(range(int(first), int(last) + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--layers: {part!r} is not a layer index or a range like 3-7") from None
    return layers


def resolve_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model_and_tokenizer(path: str, device: torch.device, dtype: torch.dtype, tokenizer_path: str | None = None):
    """A causal LM (teacher or Apriel-H1 hybrid) and its tokenizer from a local directory or Hub name."""
    import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_source(path, "model", tokenizer=tokenizer_path is None, hub=True)
    if tokenizer_path is not None and not looks_like_hub_id(tokenizer_path):
        existing_path(tokenizer_path, "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    return model, tokenizer


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory (or Hub name): a transformer teacher or an Apriel-H1 hybrid")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory, if not the model's")
    parser.add_argument("--output", required=True, type=Path, help="ranking JSON to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write (default: the output's name, .png)")
    parser.add_argument("--layers", type=parse_layers, default=None, help="candidate layers, e.g. '0-9,12' (default: all)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--chunk-size", type=int, default=1024, help="tokens projected through the LM head at a time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_loo(args: argparse.Namespace) -> dict:
    from recipes.importance.loo import describe_scores, leave_one_out
    from recipes.importance.scoring import check_metric, choice_data, load_choice_questions, load_texts, text_data

    metric = args.metric or ("accuracy" if args.choices else "kl")
    check_metric(metric, args.choices is not None)
    device = resolve_device(args.device)
    model, tokenizer = load_model_and_tokenizer(args.model, device, resolve_dtype(args.dtype, device), args.tokenizer)
    if args.choices:
        questions = load_choice_questions(args.choices)
        data = choice_data(questions, tokenizer, args.batch_size, args.max_length, str(args.choices))
    else:
        texts, source = load_texts(args.text, args.num_texts)
        data = text_data(texts, tokenizer, metric, args.batch_size, args.max_length, source)
    result = leave_one_out(model, data, args.layers, args.chunk_size, progress=not args.no_progress)
    payload = ranking_payload("loo", args.model, metric, result.importance)
    print(describe_scores(result, data.source))
    return payload


def run_mmr(args: argparse.Namespace) -> dict | None:
    from recipes.importance.mmr import MmrSettings, run_mmr_candidates

    device = resolve_device(args.device)
    model, tokenizer = load_model_and_tokenizer(args.model, device, resolve_dtype(args.dtype, device), args.tokenizer)
    settings = MmrSettings(
        model=args.model,
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        data=args.data,
        eval_batches=args.eval_batches,
        trainable=args.trainable,
        seed=args.seed,
        chunk_size=args.chunk_size,
    )
    return run_mmr_candidates(
        model, tokenizer, settings, args.state_dir, args.layers, args.shard, progress=not args.no_progress
    )


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command line of every subcommand."""
    parser = parser_class(prog="python -m recipes.importance", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    loo = commands.add_parser("loo", help="leave-one-out importance (paper eq. 4)")
    _add_model_arguments(loo)
    loo.add_argument("--choices", type=Path, default=None,
                     help="MMLU-style JSONL: {question, choices, answer}; scored by accuracy")
    loo.add_argument("--text", default=None, help="text to score (.txt or .jsonl with 'text'); default: bundled synthetic text")
    loo.add_argument("--metric", default=None, help="accuracy (with --choices), loss or kl (default: accuracy / kl)")
    loo.add_argument("--num-texts", type=int, default=64, help="documents of bundled text to score")
    loo.add_argument("--batch-size", type=int, default=8)
    loo.add_argument("--max-length", type=int, default=512, help="tokens per scored sequence")
    loo.add_argument("--highlight", type=int, default=0, help="colour the K least important layers in the plot")

    mmr = commands.add_parser("mmr", help="MIL-Mamba-Replacement importance (resumable, shardable)")
    _add_model_arguments(mmr)
    mmr.add_argument("--state-dir", required=True, type=Path,
                     help="one result file per finished layer; a rerun skips those, shards share it")
    mmr.add_argument("--shard", default="0/1", help="i/n: evaluate every n-th candidate starting at the i-th")
    mmr.add_argument("--steps", type=int, default=100, help="distillation steps per candidate (paper: 100)")
    mmr.add_argument("--learning-rate", type=float, default=1e-4, help="AdamW learning rate (warm-up over the first tenth)")
    mmr.add_argument("--batch-size", type=int, default=4)
    mmr.add_argument("--max-length", type=int, default=512, help="tokens per training sequence")
    mmr.add_argument("--data", default="synthetic", help="distillation data (recipes.training.data sources; default: synthetic)")
    mmr.add_argument("--eval-batches", type=int, default=4, help="held-out batches the initial/final losses are measured on")
    mmr.add_argument("--trainable", default="mixer", choices=("mixer", "layer", "all"),
                     help="what the short distillation trains: the new mixer, its whole block, or everything")
    mmr.add_argument("--seed", type=int, default=0)

    merge = commands.add_parser("merge", help="collect the per-layer results of an MMR state dir into one ranking")
    merge.add_argument("--state-dir", required=True, type=Path)
    merge.add_argument("--output", required=True, type=Path)
    merge.add_argument("--plot", type=Path, default=None)

    plot = commands.add_parser("plot", help="(re)draw the plot of a ranking JSON")
    plot.add_argument("ranking", type=Path)
    plot.add_argument("--plot", type=Path, default=None)
    plot.add_argument("--highlight", type=int, default=0)

    return parser


class _RaisingParser(argparse.ArgumentParser):
    """An argument parser whose errors raise (for a caller that reports them) instead of exiting."""

    def error(self, message: str):
        raise UsageError(message)


def check_arguments(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed and checked as ``main`` would, without running anything: a UsageError for an unknown
    option, a malformed value or a metric the data cannot give. The schedule checks its importance options with
    this before it writes anything."""
    from recipes.importance.scoring import check_metric

    args = build_parser(_RaisingParser).parse_args(argv)
    if args.command == "loo":
        check_metric(args.metric or ("accuracy" if args.choices else "kl"), args.choices is not None)
    return args


@command_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plot":
        payload = read_ranking(args.ranking)
        written = plot_ranking(payload, args.plot or args.ranking.with_suffix(".png"), args.highlight)
        print(f"plot: {written}")
        return 0
    if args.command == "loo":
        payload = run_loo(args)
    elif args.command == "mmr":
        payload = run_mmr(args)
    else:
        from recipes.importance.mmr import merge_state_dir

        payload = merge_state_dir(args.state_dir)
    if payload is None:  # an MMR shard whose siblings have not finished yet
        return 0
    write_ranking(args.output, payload)
    written = plot_ranking(payload, args.plot or args.output.with_suffix(".png"), getattr(args, "highlight", 0))
    print(f"ranking (least important first): {payload['ranking']}")
    print(f"wrote {args.output} and {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
