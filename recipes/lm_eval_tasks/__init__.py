"""Local lm-eval tasks that need no download: the YAML files in this folder, their data files and loaders.

* ``apriel_h1_synthetic`` (generate_until): held-out synthetic reasoning problems (``recipes.training.synthetic``); the
  score is exact match of the completion's last ``Answer:`` line, as ``recipes.training.synthetic.is_correct`` reads it.
  The models were trained on these problems as chats, so run it with the chat template applied.
* ``apriel_h1_choices`` (multiple_choice): MMLU-style questions scored as leave-one-out importance scores them
  (``recipes/importance/scoring.py``: log p(" <choice>" | "Question: <question>\\nAnswer:")); by default the
  bundled synthetic questions, or any MMLU-style JSONL file given as ``--metadata '{"choices_file": PATH}'``.

``python -m recipes.lm_eval_tasks.build`` writes the two data files from the seeded generator; a test checks
that the committed files are exactly what it writes.
"""

from __future__ import annotations

from pathlib import Path

from cli import UsageError

TASKS_DIR = Path(__file__).parent  # what lm-eval's --include_path / TaskManager(include_path=...) takes
SYNTHETIC_TASK = "apriel_h1_synthetic"
CHOICES_TASK = "apriel_h1_choices"
LOCAL_TASKS = (SYNTHETIC_TASK, CHOICES_TASK)


def require_lm_eval(install_hint: str) -> None:
    """Fail with ``install_hint`` (one line, exit 2) when the optional lm-eval extra is missing; a missing
    dependency of lm-eval itself stays a traceback."""
    try:
        import lm_eval  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "lm_eval":
            raise UsageError(install_hint) from None
        raise
