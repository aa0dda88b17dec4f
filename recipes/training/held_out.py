"""Score a model on held-out synthetic problems with nothing but transformers: answer accuracy, teacher-forced
quality, decode throughput.

This is the demo's evaluation, which must run with the core install (lm-eval is an optional extra); the
lm-eval route to the same problems is the local task ``apriel_h1_synthetic`` (``recipes/lm_eval_tasks/``),
which ``recipes/evaluate.py`` runs. Accuracy is exact match of the ``Answer:`` line of a greedy completion
(``recipes.training.synthetic.is_correct``); throughput is generated tokens per second of wall time over the whole
batched run, prompts left-padded as in serving. Exact match is all-or-nothing and stays at zero for weak (tiny,
briefly trained) models, so the teacher-forced scores on the reference solutions (cross-entropy and top-1
accuracy per assistant token) are reported too: they show how much a hybrid lost against its teacher even
when neither solves a problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipes.training.data import IGNORE_INDEX, tokenize_conversation
from recipes.training.synthetic import Problem, is_correct

# Held-out problems come from a seed the training data never uses (training uses small seeds).
HELD_OUT_SEED = 1_000_003


@dataclass
class TeacherForcedScore:
    cross_entropy: float  # mean over assistant tokens of the reference solutions
    token_accuracy: float  # fraction of those tokens that are the model's top-1 prediction
    num_tokens: int


@torch.no_grad()
def teacher_forced_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], batch_size: int = 16
) -> TeacherForcedScore:
    """Cross-entropy and top-1 accuracy of ``model`` on the assistant tokens of the problems' solutions."""
    if not problems:
        raise ValueError("no problems to evaluate; ask for at least one")
    model.eval()
    rows = [tokenize_conversation(p.messages(), tokenizer, max_length=4096) for p in problems]
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(row["input_ids"]) for row in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([row["input_ids"] + [pad] * (width - len(row["input_ids"])) for row in batch])
        labels = torch.tensor([row["labels"] + [IGNORE_INDEX] * (width - len(row["labels"])) for row in batch])
        mask = (ids != pad).long() if pad is not None else torch.ones_like(ids)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False).logits
        logits, targets = logits[:, :-1].float(), labels[:, 1:].to(model.device)
        supervised = targets != IGNORE_INDEX
        total_loss += float(torch.nn.functional.cross_entropy(logits[supervised], targets[supervised], reduction="sum"))
        correct += int((logits.argmax(-1)[supervised] == targets[supervised]).sum())
        count += int(supervised.sum())
    return TeacherForcedScore(cross_entropy=total_loss / count, token_accuracy=correct / count, num_tokens=count)


def question_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> str:
    """The text a model answers ``problem`` from: the question as the user's turn, then the assistant's header."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )


@dataclass
class GenerationScore:
    accuracy: float
    tokens_per_s: float
    num_problems: int
    generated_tokens: int
    wall_time_s: float


@torch.no_grad()
def score_on_problems(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    description: str = "evaluating",
    progress: bool = True,
) -> GenerationScore:
    """Greedy-decode every problem's question and check the final answer."""
    if not problems:
        raise ValueError("no problems to evaluate; ask for at least one")
    model.eval()
    tokenizer.padding_side = "left"
    correct = generated = 0
    elapsed = 0.0
    for start in tqdm(range(0, len(problems), batch_size), desc=description, unit="batch", disable=not progress):
        batch = problems[start : start + batch_size]
        prompts = [question_prompt(tokenizer, p) for p in batch]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        began = time.perf_counter()
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        elapsed += time.perf_counter() - began
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        generated += int((new_tokens != tokenizer.pad_token_id).sum())
        for problem, tokens in zip(batch, new_tokens):
            correct += is_correct(tokenizer.decode(tokens, skip_special_tokens=True), problem.answer)
    return GenerationScore(
        accuracy=correct / len(problems),
        tokens_per_s=generated / elapsed if elapsed > 0 else 0.0,
        num_problems=len(problems),
        generated_tokens=generated,
        wall_time_s=elapsed,
    )
