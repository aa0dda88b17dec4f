"""Command line: our checkpoints to and from the released Apriel-H1 layout, and Fast-LLM's decoder config.

    python -m conversion.released export OURS OUTPUT          # ours -> released layout (model_type apriel_h) + our code
    python -m conversion.released import SOURCE OUTPUT        # a released or Fast-LLM export -> the same, checked
    python -m conversion.released fast-llm-decoder MODEL      # Fast-LLM's decoder section (YAML) for MODEL's config

A released checkpoint needs no conversion to be used here: ``AutoModelForCausalLM.from_pretrained`` loads it
once ``modeling_apriel_h1`` is imported. Bad input gives one line on stderr and exit status 2, and nothing is
written. docs/fast_llm_interop.md describes the formats.
"""

from __future__ import annotations

import argparse
import sys

import yaml
from transformers import AutoConfig

from modeling_apriel_h1 import AprielH1Config

from cli import UsageError, command_line, existing_path, model_source, read_json
from .fast_llm import export_released_checkpoint, fast_llm_decoder_from_config, import_released_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conversion.released", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, source_help in (
        ("export", "one of our checkpoint directories (apriel_h1 or apriel_h)"),
        ("import", "a released Apriel-H1 or Fast-LLM-exported checkpoint directory"),
    ):
        command = commands.add_parser(name, help=f"{source_help} -> the released layout with our modeling code")
        command.add_argument("source", help=source_help)
        command.add_argument("output", help="directory to write (appears only when complete)")
        command.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    decoder = commands.add_parser("fast-llm-decoder", help="print Fast-LLM's decoder config (YAML) for a model")
    decoder.add_argument("model", help="an Apriel-H1 model directory (only its config.json is read)")
    return parser


@command_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fast-llm-decoder":
        directory = existing_path(args.model, "model directory")
        read_json(directory / "config.json", "model's config")
        config = AutoConfig.from_pretrained(directory)
        if not isinstance(config, AprielH1Config):
            raise UsageError(f"{args.model} holds a {config.model_type!r} model, not an Apriel-H1 hybrid (apriel_h1 or apriel_h)")
        print(yaml.safe_dump({"decoder": fast_llm_decoder_from_config(config)}, sort_keys=False), end="")
        return 0
    source = model_source(args.source, what="source checkpoint")
    convert = export_released_checkpoint if args.command == "export" else import_released_checkpoint
    config = convert(source, args.output, overwrite=args.overwrite)
    layout = config.to_dict()["hybrid_block_layout"]
    print(f"wrote {args.output}: released layout, {len(layout)} layers ({layout.count('m2')} Mamba), our modeling code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
