"""Weighted average of checkpoints that share an architecture and a layer pattern.

The released Apriel-H1-30-SFT is an SFT model merged with a distilled one; this is that step. Checkpoints are
read tensor by tensor through safetensors, one output shard at a time, so merging 15B models needs memory for
one shard of each input, not whole models. The output is written to a temporary directory and renamed into
place when complete.

    python -m recipes.merge --checkpoints out/distilled out/sft --weights 0.5 0.5 --output out/merged
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from cli import command_line, model_source, read_json
from conversion.atomic_io import staged_output_dir
from conversion.safetensors_io import INDEX_FILE, CheckpointReader

# Files copied from the first checkpoint: config, remote code, tokenizer, generation settings, provenance.
SIDECAR_SUFFIXES = (".json", ".py", ".jinja", ".txt", ".model")


def check_compatible(checkpoints: list[Path]) -> None:
    """Refuse to average models whose layers do not line up, naming what differs."""
    configs = [read_json(Path(model_source(path, "checkpoint")) / "config.json", "config") for path in checkpoints]
    first = configs[0]
    for path, config in zip(checkpoints[1:], configs[1:]):
        if config.get("layer_types") != first.get("layer_types"):
            raise ValueError(
                f"{path} has layer_types {config.get('layer_types')} but {checkpoints[0]} has "
                f"{first.get('layer_types')}; only checkpoints with the same attention/Mamba pattern can be merged"
            )
        for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
            if config.get(key) != first.get(key):
                raise ValueError(f"{path} has {key}={config.get(key)} but {checkpoints[0]} has {first.get(key)}")
    names = [set(CheckpointReader(path).weight_map) for path in checkpoints]
    for path, these in zip(checkpoints[1:], names[1:]):
        if these != names[0]:
            missing = sorted(names[0] - these)[:3]
            extra = sorted(these - names[0])[:3]
            raise ValueError(f"{path} holds different tensors than {checkpoints[0]} (missing {missing}, extra {extra})")


def normalised_weights(weights: list[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} checkpoints; give one weight per checkpoint")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {weights} must be non-negative with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def merge_checkpoints(
    checkpoints: list[str | Path], output: str | Path, weights: list[float] | None = None, overwrite: bool = False
) -> Path:
    """Write the weighted average of ``checkpoints`` to ``output``; returns the output path."""
    paths = [Path(p) for p in checkpoints]
    if len(paths) < 2:
        raise ValueError("merging needs at least two checkpoints")
    check_compatible(paths)
    mix = normalised_weights(weights, len(paths))
    readers = [CheckpointReader(path) for path in paths]

    with staged_output_dir(Path(output), overwrite=overwrite) as staging:
        for shard in tqdm(readers[0].files, desc="merging shards", unit="shard"):
            merged: dict[str, torch.Tensor] = {}
            for name in readers[0].names_by_file[shard]:
                total = None
                dtype = None
                for reader, weight in zip(readers, mix):
                    tensor = reader.read(name)
                    dtype = dtype or tensor.dtype
                    term = tensor.double() * weight
                    total = term if total is None else total + term
                merged[name] = total.to(dtype)
            save_file(merged, staging / shard, metadata={"format": "pt"})
        for item in paths[0].iterdir():
            if item.is_file() and item.suffix in SIDECAR_SUFFIXES and item.name != INDEX_FILE:
                shutil.copy2(item, staging / item.name)
        if (paths[0] / INDEX_FILE).is_file():
            shutil.copy2(paths[0] / INDEX_FILE, staging / INDEX_FILE)
        record = {"merged_from": [str(p) for p in paths], "weights": mix}
        (staging / "merge.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(output)


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="two or more save_pretrained directories")
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per checkpoint (normalised); default equal")
    parser.add_argument("--output", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    path = merge_checkpoints(args.checkpoints, args.output, args.weights, args.overwrite)
    print(f"merged {len(args.checkpoints)} checkpoints into {path}")


if __name__ == "__main__":
    sys.exit(main())
