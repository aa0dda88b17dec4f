"""Score a model on held-out synthetic problems: answer accuracy, teacher-forced quality, decode throughput.

Accuracy is exact match of the ``Answer:`` line of a greedy completion (``recipes.synthetic.is_correct``);
throughput is generated tokens per second of wall time over the whole batched run, prompts left-padded as in
serving. Exact match is all-or-nothing and stays at zero for weak (tiny, briefly trained) models, so the
teacher-forced scores on the reference solutions (cross-entropy and top-1 accuracy per assistant token) are
reported too: they show how much a hybrid lost against its teacher even when neither solves a problem.
Teacher and hybrids are measured the same way, one after another, in the same process.

    python -m recipes.evaluate --model out/final --problems 64 --seed 12345
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 with the Auto classes)
from conversion.cli import command_line
from recipes.data import IGNORE_INDEX, tokenize_conversation
from recipes.synthetic import Problem, generate_problems, is_correct

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
) -> GenerationScore:
    """Greedy-decode every problem's question and check the final answer."""
    if not problems:
        raise ValueError("no problems to evaluate; ask for at least one")
    model.eval()
    tokenizer.padding_side = "left"
    correct = generated = 0
    elapsed = 0.0
    for start in tqdm(range(0, len(problems), batch_size), desc=description, unit="batch"):
        batch = problems[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
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


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a save_pretrained directory with its tokenizer")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    problems = generate_problems(args.problems, args.seed)
    score = score_on_problems(model, tokenizer, problems, args.max_new_tokens, args.batch_size)
    forced = teacher_forced_scores(model, tokenizer, problems, args.batch_size)
    print(json.dumps({**asdict(score), **asdict(forced)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
