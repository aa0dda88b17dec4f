"""Upload a hybrid to the Hub as a repository that loads anywhere: weights, remote code, tokenizer and card.

``prepare_hub_folder`` builds the exact folder that would be uploaded (tests load it in a clean process);
``push_to_hub`` uploads that folder with ``huggingface_hub``. The folder's card is the model's card rendered for
the repository: from ``--manifest``, else from the manifest the model's card was written with
(``model_cards.card``), so it keeps "How it was made" and the evaluation tables.

    python -m model_cards.hub --model out/final --manifest out/run_manifest.json --repo-id me/my-hybrid-h1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import modeling_apriel_h1
from cli import UsageError, command_line, model_source, read_json
from model_cards.card import CARD_MANIFEST_FILE, render_model_card, stored_manifest

# per model_type: ours, and the released layout (apriel_h: hybrid_block_layout, ssm_cfg), which our code loads too
AUTO_MAPS = {
    "apriel_h1": {
        "AutoConfig": "configuration_apriel_h1.AprielH1Config",
        "AutoModel": "modeling_apriel_h1.AprielH1Model",
        "AutoModelForCausalLM": "modeling_apriel_h1.AprielH1ForCausalLM",
    },
    "apriel_h": {
        "AutoConfig": "configuration_apriel_h1.AprielHConfig",
        "AutoModel": "modeling_apriel_h1.AprielHModel",
        "AutoModelForCausalLM": "modeling_apriel_h1.AprielHForCausalLM",
    },
}
# What a repository carries besides the remote code: weights, configs, tokenizer, provenance.
UPLOADED_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt")
SKIPPED_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                 CARD_MANIFEST_FILE)  # the run's manifest names paths of this machine; the card carries its numbers


def prepare_hub_folder(
    model_dir: str | Path, folder: str | Path, manifest: dict | None = None, repo_id: str | None = None
) -> Path:
    """Copy what a Hub repository needs into ``folder``, refresh the remote code and auto_map, write the card
    (from ``manifest``, else from the one the model's card was written with)."""
    model_dir, folder = Path(model_dir), Path(folder)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; point at a save_pretrained directory")
    config = json.loads(config_path.read_text())
    if config.get("model_type") not in AUTO_MAPS:
        raise ValueError(
            f"{model_dir} holds a {config.get('model_type')!r} model; push_to_hub here is for Apriel-H1 hybrids "
            f"(model_type {' or '.join(AUTO_MAPS)})"
        )
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{model_dir} has no safetensors weights")
    folder.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.suffix in UPLOADED_SUFFIXES and item.name not in SKIPPED_FILES:
            shutil.copy2(item, folder / item.name)
    package_dir = Path(modeling_apriel_h1.__file__).parent
    for name in modeling_apriel_h1.REMOTE_CODE_FILES:  # what trust_remote_code=True needs without this package
        shutil.copy2(package_dir / name, folder / name)
    config["auto_map"] = AUTO_MAPS[config["model_type"]]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest = manifest if manifest is not None else stored_manifest(model_dir)
    (folder / "README.md").write_text(render_model_card(model_dir, manifest, repo_id))
    return folder


def push_to_hub(
    model_dir: str | Path, repo_id: str, manifest: dict | None = None, private: bool = False,
    token: str | None = None, staging_dir: str | Path | None = None,
) -> str:
    """Create (or reuse) ``repo_id`` and upload the prepared folder; returns the commit URL."""
    from huggingface_hub import HfApi

    staging = Path(staging_dir) if staging_dir else Path(model_dir).parent / f".{Path(model_dir).name}-hub"
    if staging.exists():
        shutil.rmtree(staging)
    prepare_hub_folder(model_dir, staging, manifest, repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(staging), commit_message="Upload Apriel-H1 hybrid")
    return str(commit)


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--manifest", help="run_manifest.json for the card (default: the one the model's card was "
                        "written with by model_cards.card)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", metavar="DIR", help="only write the folder that would be uploaded to DIR")
    args = parser.parse_args(argv)
    model_source(args.model, "model")
    manifest = read_json(args.manifest, "manifest") if args.manifest else None
    if args.dry_run and Path(args.dry_run).exists() and any(Path(args.dry_run).iterdir()):
        raise UsageError(f"--dry-run folder {args.dry_run} already exists and is not empty; give a new folder")
    if args.dry_run:
        print(f"prepared {prepare_hub_folder(args.model, args.dry_run, manifest, args.repo_id)}")
        return
    print(push_to_hub(args.model, args.repo_id, manifest, args.private))


if __name__ == "__main__":
    sys.exit(main())
