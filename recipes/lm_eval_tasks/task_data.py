"""The local tasks' datasets, for lm-eval's ``custom_dataset: !function task_data.<name>`` in the YAMLs here.

lm-eval imports this file by its path next to the YAML and calls the function with the run's metadata
(the model arguments and ``--metadata``) as keyword arguments. Reading the files relative to this module keeps
the tasks working from any working directory, where a relative ``data_files`` path in the YAML would not.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from recipes.importance.scoring import load_choice_questions

HERE = Path(__file__).parent


def synthetic_problems(**metadata) -> datasets.DatasetDict:
    """The bundled held-out synthetic problems (``build.py`` writes them): question, answer, kind."""
    rows = [json.loads(line) for line in (HERE / "synthetic_problems.jsonl").read_text().splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def choice_questions(choices_file: str | None = None, **metadata) -> datasets.DatasetDict:
    """MMLU-style questions (question, choices, answer index), read and checked as leave-one-out reads them:
    the bundled synthetic ones, or ``choices_file`` when ``--metadata`` names one."""
    questions = load_choice_questions(choices_file or HERE / "synthetic_choices.jsonl")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(questions)})
