"""The method study's quality measures beyond exact match: closeness to the teacher and general language ability.

* :func:`teacher_forced_scores`: on the reference solutions of held-out problems, per assistant token, the
  model's cross-entropy, its top-1 accuracy and its KL divergence from the teacher, both directions
  (KL(model || teacher) is what the recipe's reverse-KL distillation minimises). Padding is told apart by the
  rows' lengths, never by the pad id (a tokenizer whose pad token is its end-of-turn token is common).
* :func:`real_text_perplexity`: perplexity on held-out real English text that ships with Python itself
  (``recipes.training.real_text.held_out_real_text``), so that a distillation on task data alone shows what it
  costs the model's language ability. Nothing is downloaded.
* :func:`engine_exact_match`: exact match of greedy answers decoded by the package's decode engine (CUDA graphs
  on a GPU), the same scoring as ``recipes.training.held_out.score_on_problems`` at a fraction of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from modeling_apriel_h1.engine.decoding import DecodeEngine
from recipes.training.data import IGNORE_INDEX, tokenize_conversation
from recipes.training.held_out import question_prompt
from recipes.training.synthetic import Problem, is_correct


@dataclass
class TeacherForcedScores:
    cross_entropy: float  # mean over the assistant tokens of the reference solutions
    token_accuracy: float  # fraction of those tokens that are the model's top-1 prediction
    kl_to_teacher: float | None  # mean KL(model || teacher) per assistant token (None without a teacher)
    forward_kl_to_teacher: float | None  # mean KL(teacher || model)
    num_tokens: int


def _padded(rows: list[dict[str, list[int]]], device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        ids[index, :length] = torch.tensor(row["input_ids"])
        mask[index, :length] = 1
        labels[index, :length] = torch.tensor(row["labels"])
    return ids.to(device), mask.to(device), labels.to(device)


@torch.no_grad()
def teacher_forced_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    teacher: PreTrainedModel | None = None,
    batch_size: int = 16,
) -> TeacherForcedScores:
    """CE, top-1 accuracy and KL to ``teacher`` of ``model`` on the assistant tokens of the problems' solutions."""
    if not problems:
        raise ValueError("no problems to evaluate; ask for at least one")
    model.eval()
    rows = [tokenize_conversation(p.messages(), tokenizer, max_length=4096) for p in problems]
    totals = {"ce": 0.0, "correct": 0, "kl": 0.0, "forward_kl": 0.0, "count": 0}
    for start in range(0, len(rows), batch_size):
        ids, mask, labels = _padded(rows[start : start + batch_size], model.device)
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][supervised].float()
        log_probs = F.log_softmax(logits, dim=-1)
        totals["ce"] += float(F.nll_loss(log_probs, targets[supervised], reduction="sum"))
        totals["correct"] += int((logits.argmax(-1) == targets[supervised]).sum())
        totals["count"] += int(supervised.sum())
        if teacher is not None:
            teacher_logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            teacher_log_probs = F.log_softmax(teacher_logits[supervised].float(), dim=-1)
            totals["kl"] += float(F.kl_div(teacher_log_probs, log_probs, log_target=True, reduction="sum"))
            totals["forward_kl"] += float(F.kl_div(log_probs, teacher_log_probs, log_target=True, reduction="sum"))
    count = totals["count"]
    return TeacherForcedScores(
        cross_entropy=totals["ce"] / count,
        token_accuracy=totals["correct"] / count,
        kl_to_teacher=totals["kl"] / count if teacher is not None else None,
        forward_kl_to_teacher=totals["forward_kl"] / count if teacher is not None else None,
        num_tokens=count,
    )


@torch.no_grad()
def real_text_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int, window: int = 1024,
    batch_size: int = 8,
) -> dict:
    """Perplexity of ``model`` on the first ``max_tokens`` tokens of ``text``, cut into non-overlapping windows
    of ``window`` tokens scored independently (each window's first token is context only)."""
    model.eval()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    windows = [ids[start : start + window] for start in range(0, len(ids), window)]
    windows = [chunk for chunk in windows if len(chunk) > 1]
    if not windows:
        raise ValueError(f"the text has {len(ids)} tokens; perplexity needs at least 2")
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        rows = [{"input_ids": chunk, "labels": chunk} for chunk in windows[start : start + batch_size]]
        batch_ids, mask, labels = _padded(rows, model.device)
        logits = model(input_ids=batch_ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        total += float(F.cross_entropy(logits[scored], targets[scored], reduction="sum"))
        count += int(scored.sum())
    return {"perplexity": math.exp(total / count), "tokens": count}


@torch.no_grad()
def engine_exact_match(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], max_new_tokens: int,
    slots: int = 256,
) -> dict:
    """Exact match of greedy answers decoded by the decode engine (eos ends a sequence); returns the accuracy and
    the generated tokens."""
    prompts = [tokenizer(question_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in problems]
    longest = max(len(prompt) for prompt in prompts)
    engine = DecodeEngine(model, max_batch_size=min(slots, len(prompts)), max_seq_len=longest + max_new_tokens + 1,
                          pack_projections=False)
    outputs = engine.generate_batch(prompts, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    correct = sum(is_correct(tokenizer.decode(tokens, skip_special_tokens=True), problem.answer)
                  for tokens, problem in zip(outputs, problems))
    return {"accuracy": correct / len(problems), "generated_tokens": sum(map(len, outputs)),
            "num_problems": len(problems)}
