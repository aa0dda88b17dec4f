"""Check the outputs of check_accelerate.sh: each run trained on both ranks and saved a loadable student."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1)


def verify(run: Path) -> str:
    checkpoint = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    marker = json.loads((checkpoint / "checkpoint_state.json").read_text())
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    losses = [entry["kd_loss"] for entry in history if "kd_loss" in entry]
    if run.name == "zero3":
        # DeepSpeed names per-rank model-state files only under stage 3, where the parameters are partitioned
        step_dir = checkpoint / f"global_step{marker['global_step']}"
        shards = sorted(path.name for path in step_dir.glob("zero_pp_rank_*_model_states.pt"))
        assert len(shards) == 2, f"{run}: expected a ZeRO-3 model-state shard per rank, found {shards}"
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    with torch.no_grad():
        logits = model(torch.randint(3, 100, (1, 16))).logits
    assert torch.isfinite(logits).all(), f"{run}: non-finite logits from the saved student"
    assert len(losses) >= 2 and all(map(torch.isfinite, map(torch.tensor, losses))), f"{run}: losses {losses}"
    return (f"{run.name}: {checkpoint.name}, step {marker['global_step']}, tokens seen (all ranks) "
            f"{marker['num_input_tokens_seen']:,}, kd_loss {losses[0]:.4f} -> {losses[-1]:.4f}, saved student loads")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(verify(Path(path)))
