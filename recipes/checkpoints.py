"""Complete checkpoints only: a marker written last, and resume from the newest marked checkpoint.

``Trainer`` writes a checkpoint file by file straight into ``checkpoint-N``; a run killed mid-save leaves a
directory that ``transformers.trainer_utils.get_last_checkpoint`` would happily resume from. The
distillation trainer therefore writes ``distillation_state.json`` into a checkpoint after everything else
(atomically: temporary file, then rename), and resume looks only at checkpoints that have it. The file also
records what the paper reports per stage: the tokens seen so far.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conversion.atomic_io import write_json_atomically

STATE_FILE = "distillation_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def mark_checkpoint_complete(checkpoint_dir: Path, state: dict) -> None:
    """Record ``state`` in the checkpoint, which is what makes it count as complete."""
    write_json_atomically(checkpoint_dir / STATE_FILE, state)


def read_distillation_state(checkpoint_dir: Path) -> dict | None:
    """The recorded state of a complete checkpoint, or None for an incomplete one."""
    path = Path(checkpoint_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step ``checkpoint-N`` in ``output_dir`` that was saved completely, if any."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = {
        int(match.group(1)): child
        for child in output_dir.iterdir()
        if child.is_dir() and (match := _CHECKPOINT_NAME.match(child.name))
    }
    for step in sorted(steps, reverse=True):
        if read_distillation_state(steps[step]) is not None:
            return steps[step]
    return None
