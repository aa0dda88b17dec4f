"""Command line: turn a transformer (or an Apriel-H1 hybrid) checkpoint into a hybrid with more Mamba layers.

    python -m conversion.convert --teacher PATH --output DIR --mamba-layers 3,7,12
    python -m conversion.convert --teacher PATH --output DIR --num-mamba-layers 25 --importance loo.json

With ``--num-mamba-layers K --importance FILE`` the K least important layers of the ranking become Mamba; for
an AprielH1 teacher K is the total number of Mamba layers in the student (its existing ones count).
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoConfig

from .checkpoint import convert_checkpoint
from cli import command_line
from .importance_file import read_importance
from .layers import least_important_layers

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer indices, e.g. 3,7,12")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conversion.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher checkpoint directory (safetensors)")
    parser.add_argument("--output", required=True, help="directory to write the hybrid to")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--mamba-layers", type=_layer_list, help="layers to replace, e.g. 3,7,12")
    which.add_argument("--num-mamba-layers", type=int, help="total Mamba layers wanted (needs --importance)")
    parser.add_argument("--importance", help="layer-importance JSON (least important first), see conversion/importance_file.py")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the output (default: the teacher's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random parts of the MIL init (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_mamba_layers is not None and args.importance is None:
        parser.error("--num-mamba-layers needs --importance FILE to know which layers are least important")
    if args.importance is not None and args.num_mamba_layers is None:
        parser.error("--importance is used with --num-mamba-layers K; with --mamba-layers, leave it out")
    layers = args.mamba_layers
    if layers is None:
        teacher_config = AutoConfig.from_pretrained(args.teacher)
        layers = least_important_layers(teacher_config, read_importance(args.importance), args.num_mamba_layers)
    record = convert_checkpoint(
        args.teacher, args.output, layers, seed=args.seed, dtype=DTYPES.get(args.dtype),
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(
        f"wrote {args.output}: replaced layers {record.replaced_layers}; Mamba layers now {record.mamba_layers} "
        f"({record.dtype}, seed {record.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
