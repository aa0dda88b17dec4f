"""Complete checkpoints only: a marker written last, and resume from the newest marked checkpoint.

``Trainer`` writes a checkpoint file by file straight into ``checkpoint-N``; a run killed mid-save leaves a
directory that ``transformers.trainer_utils.get_last_checkpoint`` would happily resume from. Our trainers
therefore write ``checkpoint_state.json`` into a checkpoint after everything else (atomically: temporary file,
then rename), and resume looks only at checkpoints that have it. The file also records what the paper reports
per stage: the tokens seen so far.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from transformers.trainer_utils import rotate_checkpoints

from cli import read_json_if_present
from conversion.atomic_io import write_json_atomically

STATE_FILE = "checkpoint_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def mark_checkpoint_complete(checkpoint_dir: Path, state: dict) -> None:
    """Record ``state`` in the checkpoint, which is what makes it count as complete."""
    write_json_atomically(checkpoint_dir / STATE_FILE, state)


def read_checkpoint_state(checkpoint_dir: Path) -> dict | None:
    """The recorded state of a complete checkpoint, or None for an incomplete one."""
    return read_json_if_present(Path(checkpoint_dir) / STATE_FILE)


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
        if read_checkpoint_state(steps[step]) is not None:
            return steps[step]
    return None


class CompleteCheckpointsMixin:
    """For a ``Trainer`` subclass (listed before it): each checkpoint is marked complete before older ones go.

    Trainer prunes old checkpoints (``save_total_limit``) at the end of its own save, which is before a subclass
    can mark the new one: with a limit of 1, a crash in between left no complete checkpoint and the run started
    over. Here Trainer saves with pruning off, the marker is written, and only then are old checkpoints pruned.
    """

    def checkpoint_state(self) -> dict[str, Any]:
        """What the marker records; subclasses add their own fields."""
        return {"global_step": self.state.global_step, "num_input_tokens_seen": self.state.num_input_tokens_seen}

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            mark_checkpoint_complete(Path(run_dir) / f"checkpoint-{self.state.global_step}", self.checkpoint_state())
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)
