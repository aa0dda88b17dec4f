"""Model cards filled from what a run actually did: the model's config, ``conversion.json`` and the run manifest.

Nothing in a card is typed by hand: the layer pattern comes from ``config.json`` (ours, or the released
``apriel_h`` layout, read through the package's config classes), the teacher and the
initialisation from ``conversion.json``, and stages, tokens, losses, wall times and evaluation tables from the
run manifest that ``recipes/schedule.py`` writes (``run_manifest.json``). The manifest a card was written
with is kept beside it (``card_manifest.json``), so that the Hub folder and a later evaluation rewrite the card
from the same run without being given the manifest again.

``base_model`` (the Hub's link to the model this one was made from) is the teacher's Hub id; a teacher read
from a local directory has none, so the field is left out rather than pointing at a path of this machine.

    python -m model_cards.card --model out/final --manifest out/run_manifest.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from transformers import AutoConfig

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 and the released apriel_h with the Auto classes)
from cli import command_line, looks_like_hub_id, model_source, read_json, read_json_if_present
from conversion.atomic_io import write_json_atomically, write_text_atomically
from conversion.safetensors_io import CheckpointReader
from modeling_apriel_h1.layer_types import mamba_layers_of

TEMPLATE = "template.md.jinja"
CARD_MANIFEST_FILE = "card_manifest.json"  # the run manifest the model's README.md was rendered from


def _count_parameters(model_dir: Path) -> str:
    """Parameter count from the safetensors headers (no weights are loaded)."""
    reader = CheckpointReader(model_dir)
    total = sum(math.prod(reader.layout(name)[0]) for name in reader.names)
    return f"{total / 1e9:.2f}B" if total >= 1e9 else f"{total / 1e6:.2f}M"


def _conversion_teacher(conversion: dict[str, Any] | None) -> str | None:
    """The transformer the model was converted from, where ``conversion.json`` names it: a later stage of a staged
    run is converted from the previous stage's hybrid (its record lists ancestors), which is not the teacher."""
    if not conversion or conversion.get("ancestor_config_sha256s"):
        return None
    return conversion.get("teacher")


def hub_id(teacher: str | None) -> str | None:
    """``teacher`` if it names a Hub repository, None for a local path (which means nothing on the Hub)."""
    if not teacher or Path(teacher).expanduser().exists() or not looks_like_hub_id(teacher):
        return None
    return teacher


def _stage_rows(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for stage in stages:
        initial, final = stage.get("initial_kd_loss"), stage.get("final_kd_loss")
        loss_text = f"{initial:.4f} -> {final:.4f}" if initial is not None and final is not None else "n/a"
        rows.append(
            {
                "name": stage["name"],
                "num_mamba": len(stage["mamba_layers"]),
                "layers_added": stage["layers_added"],
                "importance_method": stage.get("importance_method", "given"),
                "steps": stage.get("steps", 0),
                "tokens": stage.get("tokens", 0),
                "loss_text": loss_text,
                "wall_text": f"{stage.get('wall_time_s', 0.0):.0f} s",
            }
        )
    return rows


def card_context(
    model_dir: str | Path, manifest: dict[str, Any] | None = None, repo_id: str | None = None, license: str = "apache-2.0"
) -> dict[str, Any]:
    """Everything the template needs, gathered from the files of a run."""
    model_dir = Path(model_source(model_dir, "model"))
    read_json(model_dir / "config.json", "config")  # a missing or broken file is named in one line
    config = AutoConfig.from_pretrained(model_dir)
    conversion = read_json_if_present(model_dir / "conversion.json")
    merge = read_json_if_present(model_dir / "merge.json")
    mamba_layers = mamba_layers_of(config)
    teacher = (manifest or {}).get("teacher") or _conversion_teacher(conversion)
    stages = _stage_rows((manifest or {}).get("stages", []))
    mode = (manifest or {}).get("mode", "staged")
    mode_sentence = (
        f"Staged distillation in {len(stages)} stages, re-ranking the remaining attention layers before each stage."
        if mode == "staged"
        else "One-shot distillation: all layers replaced at once."
    )
    return {
        "name": repo_id.split("/")[-1] if repo_id else model_dir.name,
        "repo_id": repo_id or str(model_dir),
        "license": license,
        "teacher": teacher,
        "base_model": hub_id(teacher),
        "num_layers": config.num_hidden_layers,
        "num_mamba": len(mamba_layers),
        "mamba_layers": mamba_layers or ["none"],
        "pattern": "".join("M" if index in mamba_layers else "A" for index in range(config.num_hidden_layers)),
        "hidden_size": config.hidden_size,
        "d_state": getattr(config, "mamba_d_state", None),
        "d_inner": getattr(config, "mamba_d_inner", None),
        "d_xb": getattr(config, "mamba_d_xb", None),
        "parameters": _count_parameters(model_dir),
        "conversion": {
            "init_method": (conversion or {}).get("init_method", "mil"),
            "package_version": (conversion or {}).get("package_version", "unknown"),
        }
        if conversion
        else None,
        "stages": stages,
        "mode_sentence": mode_sentence,
        "total_tokens": sum(stage["tokens"] for stage in stages),
        "sft": (manifest or {}).get("sft"),
        "merge": {"sources": merge["merged_from"], "weights": [f"{w:.2f}" for w in merge["weights"]]} if merge else None,
        "evaluation": (manifest or {}).get("evaluation"),
        "lm_eval": (manifest or {}).get("lm_eval"),
    }


def render_model_card(
    model_dir: str | Path, manifest: dict[str, Any] | None = None, repo_id: str | None = None
) -> str:
    environment = Environment(
        loader=FileSystemLoader(Path(__file__).parent), undefined=StrictUndefined, keep_trailing_newline=True
    )
    return environment.get_template(TEMPLATE).render(**card_context(model_dir, manifest, repo_id))


def stored_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The run manifest the model's card was last written with, if any."""
    return read_json_if_present(Path(model_dir) / CARD_MANIFEST_FILE)


def write_card(model_dir: str | Path, manifest: dict[str, Any] | None, repo_id: str | None = None) -> Path:
    """Render the card from ``manifest`` and write it as the model directory's README.md, keeping the manifest
    beside it for the next writer (the Hub folder, an evaluation)."""
    card = render_model_card(model_dir, manifest, repo_id)
    if manifest is not None:
        write_json_atomically(Path(model_dir) / CARD_MANIFEST_FILE, manifest)
    path = Path(model_dir) / "README.md"
    write_text_atomically(path, card)
    return path


def write_model_card(model_dir: str | Path, manifest_path: str | Path | None = None, repo_id: str | None = None) -> Path:
    """Render the card from the run manifest at ``manifest_path`` (default: the one the card was last written
    with) and write it as the model directory's README.md."""
    manifest = read_json(manifest_path, "manifest") if manifest_path else stored_manifest(model_dir)
    return write_card(model_dir, manifest, repo_id)


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a save_pretrained directory of the hybrid")
    parser.add_argument("--manifest", help="run_manifest.json written by recipes/schedule.py "
                        "(default: the one the model's card was last written with)")
    parser.add_argument("--repo-id", help="the Hub repository the card will live in (for the usage snippet)")
    args = parser.parse_args(argv)
    print(f"wrote {write_model_card(args.model, args.manifest, args.repo_id)}")


if __name__ == "__main__":
    sys.exit(main())
