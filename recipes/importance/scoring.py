"""What LOO scores a model on: the data (multiple-choice questions or plain text), batched, and the metric.

Metrics (``P`` is the performance; LOO importance is ``P(unmodified) - P(without the layer)``):

* ``accuracy``: multiple-choice accuracy on an MMLU-style JSONL file, one question per line:
  ``{"question": str, "choices": [str, ...], "answer": int}`` (``answer`` may also be a letter, ``"A"`` = 0).
  Each choice is scored by its log-likelihood ``log p(" <choice>" | "Question: <question>\\nAnswer:")`` (the sum
  over its tokens); the prediction is the most likely choice. This is the paper's metric (MMLU accuracy).
* ``loss``: ``P = -`` the mean next-token cross-entropy on text; importance is the loss increase.
* ``kl``: ``P = -`` the mean per-token KL(p_without_layer || p_unmodified) on text, the reverse KL of the
  distillation loss; the unmodified model scores 0. Needs no trained model, so it is the default on text.

Text is a ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file with a ``text`` field per line,
or, when no file is given, held-out synthetic reasoning problems of :mod:`recipes.training.synthetic`.

Nothing here materialises a batch's full logits: the final hidden states are projected through the LM head a
chunk of tokens at a time (a 131k vocabulary over a long batch would not fit otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from recipes.training.kd_loss import token_divergence
from recipes.training.synthetic import generate_problems

METRICS = ("accuracy", "loss", "kl")
IGNORE_INDEX = -100
BUNDLED_TEXT = "synthetic"
BUNDLED_TEXT_SEED = 20_251_001  # a seed the distillation data (seed 0, 1, ...) does not use: held out


@dataclass
class ScoringData:
    """Batches of ``input_ids``/``attention_mask``/``labels`` (next-token targets, (batch, seq - 1)) and
    ``row`` (each sequence's global index), plus what the metric needs to turn per-row sums into a score."""

    metric: str
    source: str
    batches: list[dict[str, torch.Tensor]]
    num_rows: int
    question_of_row: list[int] | None = None  # accuracy only: the question each row (one choice) belongs to
    answers: list[int] | None = None  # accuracy only: the correct row of each question

    @property
    def needs_reference(self) -> bool:
        return self.metric == "kl"


class RowSums(NamedTuple):
    """Per-row sums over the supervised tokens: label log-likelihood, KL to the reference, token count."""

    logprob: torch.Tensor
    kl: torch.Tensor
    tokens: torch.Tensor


# ----------------------------------------------------------------------------------------------- loading


def check_metric(metric: str, has_choices_file: bool) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if (metric == "accuracy") != has_choices_file:
        raise ValueError(
            "metric 'accuracy' needs a multiple-choice file (--choices FILE.jsonl)"
            if metric == "accuracy"
            else f"metric {metric!r} scores text; a multiple-choice file is scored with metric 'accuracy'"
        )


def load_choice_questions(path: str | Path) -> list[dict]:
    """The questions of an MMLU-style JSONL file, checked: question (str), choices (2+ str), answer (index)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"multiple-choice file {path} does not exist")
    questions = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} is not valid JSON ({error})") from None
        missing = [key for key in ("question", "choices", "answer") if key not in row]
        if missing:
            raise ValueError(
                f"{where} lacks the field(s) {missing}; each line needs "
                '{"question": str, "choices": [str, ...], "answer": index of the correct choice}'
            )
        choices, answer = row["choices"], row["answer"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least two strings")
        if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
            answer = ord(answer.upper()) - ord("A")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{where}: 'answer' is {row['answer']!r}; give the index 0..{len(choices) - 1} (or a letter)")
        questions.append({"question": str(row["question"]), "choices": choices, "answer": answer})
    if not questions:
        raise ValueError(f"multiple-choice file {path} has no questions")
    return questions


def load_texts(path: str | Path | None, num_synthetic: int = 64) -> tuple[list[str], str]:
    """Documents to score and a description of where they came from (see the module docstring)."""
    if path is None or str(path) == BUNDLED_TEXT:
        problems = generate_problems(num_synthetic, seed=BUNDLED_TEXT_SEED)
        return [f"{problem.question}\n{problem.solution()}" for problem in problems], BUNDLED_TEXT
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    if path.suffix == ".jsonl":
        texts = []
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get("text"), str):
                    raise ValueError(f"{path}:{line_number} has no string field 'text'")
                texts.append(row["text"])
    else:
        texts = [part.strip() for part in path.read_text().split("\n\n") if part.strip()]
    if not texts:
        raise ValueError(f"text file {path} has no text to score")
    return texts, str(path)


def _batches(sequences: list[tuple[list[int], int]], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches; each sequence is (token ids, index of its first scored token). Longest first."""
    order = sorted(range(len(sequences)), key=lambda row: -len(sequences[row][0]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(sequences[row][0]) for row in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for slot, row in enumerate(rows):
            ids, first_scored = sequences[row]
            input_ids[slot, : len(ids)] = torch.tensor(ids)
            attention_mask[slot, : len(ids)] = 1
            labels[slot, first_scored : len(ids)] = torch.tensor(ids[first_scored:])
        batches.append(
            {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels[:, 1:], "row": torch.tensor(rows)}
        )
    return batches


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def choice_data(questions: list[dict], tokenizer, batch_size: int = 8, max_length: int = 1024, source: str = "") -> ScoringData:
    """One row per (question, choice): the prompt, then the choice, whose tokens alone are scored."""
    sequences, question_of_row, answers = [], [], []
    for number, question in enumerate(questions):
        prompt = tokenizer(f"Question: {question['question']}\nAnswer:", add_special_tokens=True)["input_ids"]
        answers.append(len(sequences) + question["answer"])
        for choice in question["choices"]:
            continuation = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            if not continuation:
                raise ValueError(f"question {number}: choice {choice!r} tokenizes to nothing")
            ids = (prompt + continuation)[-max_length:]  # keep the choice; cut the prompt from the left
            sequences.append((ids, max(1, len(ids) - len(continuation))))
            question_of_row.append(number)
    return ScoringData(
        "accuracy", source, _batches(sequences, batch_size, _pad_id(tokenizer)), len(sequences), question_of_row, answers
    )


def text_data(texts: list[str], tokenizer, metric: str, batch_size: int = 8, max_length: int = 512, source: str = "") -> ScoringData:
    """One row per document (truncated to ``max_length`` tokens); every token after the first is scored."""
    sequences = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) >= 2:
            sequences.append((ids, 1))
    if not sequences:
        raise ValueError("no document has the two tokens needed to score a next-token prediction")
    return ScoringData(metric, source, _batches(sequences, batch_size, _pad_id(tokenizer)), len(sequences))


# ----------------------------------------------------------------------------------------------- scoring


def head_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, head.bias


@torch.no_grad()
def row_sums(
    hidden: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor | None],
    labels: torch.Tensor,
    reference: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    chunk_size: int = 1024,
) -> RowSums:
    """Sums per row of the label log-likelihood and (given ``reference`` = (hidden, head) of the unmodified
    model) the reverse KL to it, over supervised tokens, projecting ``chunk_size`` tokens at a time."""
    supervised = labels != IGNORE_INDEX
    rows = supervised.nonzero()[:, 0]
    states, targets = hidden[supervised], labels[supervised]
    reference_states = reference[0][supervised] if reference is not None else None
    logprob = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
    kl = torch.zeros_like(logprob)
    for start in range(0, states.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        logits = F.linear(states[chunk], *head).float()
        logprob.index_add_(0, rows[chunk], logits.log_softmax(-1).gather(-1, targets[chunk, None]).squeeze(-1))
        if reference is not None:
            reference_logits = F.linear(reference_states[chunk], *reference[1])
            kl.index_add_(0, rows[chunk], token_divergence(logits, reference_logits, "reverse_kl"))
    return RowSums(logprob, kl, supervised.sum(-1).to(torch.float32))


def performance(data: ScoringData, sums: RowSums) -> float:
    """P of one model variant from its per-row sums over all the data (rows in global order)."""
    if data.metric == "accuracy":
        best: dict[int, tuple[float, int]] = {}
        for row, (question, value) in enumerate(zip(data.question_of_row, sums.logprob.tolist())):
            if question not in best or value > best[question][0]:
                best[question] = (value, row)
        return sum(best[question][1] == answer for question, answer in enumerate(data.answers)) / len(data.answers)
    tokens = float(sums.tokens.sum())
    if data.metric == "loss":
        return float(sums.logprob.sum()) / tokens
    return -float(sums.kl.sum()) / tokens
