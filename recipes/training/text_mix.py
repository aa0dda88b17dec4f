"""Real text mixed into the task data: the ``text_data`` and ``text_share`` settings of distillation and SFT.

Distilling on task replies alone costs a hybrid the teacher's general language: on SmolLM2-135M-Instruct at 15/30
Mamba, real-text perplexity stayed at 99 (teacher 8.6) after distilling on the traces alone, and reached 32 with a
quarter of the tokens real text (docs/study.md). So the text is a setting rather than a file the user prepares:

* ``text_data``: null (no text); ``python_docs``, the training share of the running Python's own documentation
  (:mod:`recipes.training.real_text`: pydoc's topics and the standard library's docstrings, its held-out share never
  included); a local ``.txt`` file (its text as one document, cut into rows at blank lines); or a local ``.jsonl``
  file of ``{"text": ...}`` rows (each row a document, cut likewise).
* ``text_share``: the fraction of the training tokens that are text, 0 <= share < 1. The average token count of a
  task row and of a text piece are measured with the tokenizer (as training truncates them), text pieces are drawn
  in shuffled passes over the corpus (a seeded generator) until they make up the share, and all rows are shuffled
  together. A text row is learned on every token, a task row on its assistant tokens (``recipes.training.data``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from cli import UsageError
from recipes.training.data import tokenize_row, tokenize_text
from recipes.training.real_text import sha256_of_text, text_pieces, training_documents

PYTHON_DOCS = "python_docs"
TEXT_FILE_SUFFIXES = (".txt", ".jsonl")
CHARS_PER_TOKEN = 3  # a text piece holds about max_length * 3 characters: about one training row
MEASURED_TASK_ROWS = 256  # the task rows' average token count is measured on the first ones
MEASURED_TEXT_PIECES = 1024  # and the text pieces' on a seeded sample of them


def check_text_settings(text_data: str | None, text_share: float, where: dict[str, str]) -> None:
    """Refuse a share outside [0, 1), a share without text, or text that is not there, naming where the value came
    from (``where[key]``) and what to give instead."""
    if not 0 <= text_share < 1:
        raise UsageError(f"text_share is {text_share!r} ({where.get('text_share', '')}); give the fraction of the "
                         "training tokens that are text, at least 0 and below 1 (e.g. 0.25)")
    if text_share > 0 and text_data is None:
        raise UsageError(f"text_share is {text_share!r} ({where.get('text_share', '')}) but text_data is null; set "
                         f"text_data to {PYTHON_DOCS} or a local .txt/.jsonl file, or text_share to 0")
    if text_data is None or text_data == PYTHON_DOCS:
        return
    if Path(text_data).suffix not in TEXT_FILE_SUFFIXES:
        raise UsageError(f"text_data is {text_data!r} ({where.get('text_data', '')}); give null, {PYTHON_DOCS}, or a "
                         "local .txt file or .jsonl file of {\"text\": ...} rows")
    if not Path(text_data).is_file():
        raise UsageError(f"text_data {text_data} ({where.get('text_data', '')}) does not exist; give an existing "
                         f".txt/.jsonl file, {PYTHON_DOCS} or null")


def text_documents(text_data: str) -> tuple[Sequence[str], str]:
    """The documents of ``text_data`` (see the module docstring) and a description of them."""
    if text_data == PYTHON_DOCS:
        return training_documents()
    path = Path(text_data)
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")], f"{path} (text file)"
    documents = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UsageError(f"{path} line {number} is not a {{\"text\": ...}} row; every row of text_data needs a "
                             "'text' string")
        documents.append(row["text"])
    return documents, f"{path} ({len(documents):,} text rows)"


def mix_in_text(rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                text_data: str | None, text_share: float, seed: int) -> tuple[datasets.Dataset, dict | None]:
    """``rows`` with text pieces of ``text_data`` mixed in at about ``text_share`` of the tokens, shuffled with
    ``seed``, and a record of what was mixed (None, and ``rows`` unchanged, when there is no text to mix)."""
    if text_data is None or text_share == 0:
        return rows, None
    documents, description = text_documents(text_data)
    pieces = [piece for piece in text_pieces(documents, max_chars=max_length * CHARS_PER_TOKEN) if piece.strip()]
    if not pieces or len(rows) == 0:
        raise UsageError(f"text_data {text_data} has no text to mix in" if not pieces else
                         "The training data set is empty. Point `data` at a file or data set with rows in it.")
    generator = random.Random(seed)
    task_sample = rows.select(range(min(len(rows), MEASURED_TASK_ROWS)))
    task_tokens = len(rows) * sum(len(tokenize_row(row, tokenizer, max_length)["input_ids"])
                                  for row in task_sample) / len(task_sample)
    measured = generator.sample(pieces, min(len(pieces), MEASURED_TEXT_PIECES))
    piece_tokens = sum(len(tokenize_text(piece, tokenizer, max_length)["input_ids"])
                       for piece in measured) / len(measured)
    wanted = round(task_tokens * text_share / (1 - text_share) / piece_tokens)
    texts: list[str] = []
    while len(texts) < wanted:  # cycled in shuffled passes: every piece once before any twice
        texts.extend(generator.sample(pieces, len(pieces)))
    mixed = datasets.concatenate_datasets([_with_text_column(rows), _text_rows(texts[:wanted], rows)])
    order = list(range(len(mixed)))
    generator.shuffle(order)
    record = {
        "text_data": text_data,
        "text": description,
        "text_sha256": sha256_of_text("\n\n".join(documents)),
        "task_rows": len(rows),
        "text_rows": wanted,
        "text_passes": wanted / len(pieces),
        "text_share_asked": text_share,
        "text_share_of_tokens": wanted * piece_tokens / (wanted * piece_tokens + task_tokens),
    }
    return mixed.select(order), record


def describe_mix(record: dict | None) -> str:
    """One line on what was mixed in, for the run's output."""
    if record is None:
        return "text mixed in: none (text_data null or text_share 0)"
    return (f"text mixed in: {record['text_rows']:,} rows ({record['text_passes']:.2f} passes) beside "
            f"{record['task_rows']:,} task rows, {record['text_share_of_tokens']:.3f} of the tokens (asked "
            f"{record['text_share_asked']}); {record['text']}; sha256 {record['text_sha256'][:12]}...")


def _with_text_column(rows: datasets.Dataset) -> datasets.Dataset:
    if "text" in rows.column_names:
        return rows
    return rows.add_column("text", [None] * len(rows), feature=datasets.Value("string"))


def _text_rows(texts: list[str], like: datasets.Dataset) -> datasets.Dataset:
    """``{"text": ...}`` rows with the task rows' other columns empty, so that the two concatenate."""
    features = _with_text_column(like.select([])).features
    columns = {name: [None] * len(texts) for name in features}
    columns["text"] = texts
    return datasets.Dataset.from_dict(columns, features=features)
