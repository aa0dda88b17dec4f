"""Write the local tasks' data files from the seeded synthetic-problem generator.

    python -m recipes.lm_eval_tasks.build [--problems 200]

``synthetic_problems.jsonl``: ``generate_problems(N, HELD_OUT_SEED)`` as ``{question, answer, kind}`` rows (the
seed no training data uses). ``synthetic_choices.jsonl``: the same problems as MMLU-style multiple choice
(``{question, choices, answer}``), the right answer among distractors of the same kind (nearby numbers, the
other people of an ordering puzzle, the other truth value), its position drawn from a seeded generator.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from recipes.lm_eval_tasks import TASKS_DIR
from recipes.training.held_out import HELD_OUT_SEED
from recipes.training.synthetic import Problem, generate_problems

NUM_PROBLEMS = 200
NUM_CHOICES = 4
PROBLEMS_FILE = "synthetic_problems.jsonl"
CHOICES_FILE = "synthetic_choices.jsonl"


def _distractors(problem: Problem, rng: random.Random) -> list[str]:
    """Wrong answers a model that half-solved the problem might give, of the answer's own kind."""
    if problem.kind == "logic":
        return ["False" if problem.answer == "True" else "True"]
    if problem.kind == "ordering":
        people = problem.steps[-1].removeprefix("So the order is ").rstrip(".").split(" > ")
        return [person for person in people if person != problem.answer][: NUM_CHOICES - 1]
    value = int(problem.answer)
    offsets = rng.sample([-10, -2, -1, 1, 2, 10], NUM_CHOICES - 1)
    return [str(value + offset) for offset in offsets]


def choice_question(problem: Problem, rng: random.Random) -> dict:
    """The problem as one MMLU-style row: the answer inserted at a random position among the distractors."""
    choices = _distractors(problem, rng)
    position = rng.randint(0, len(choices))
    choices.insert(position, problem.answer)
    return {"question": problem.question, "choices": choices, "answer": position}


def data_files(num_problems: int = NUM_PROBLEMS) -> dict[str, str]:
    """File name -> JSONL text of both data files."""
    problems = generate_problems(num_problems, HELD_OUT_SEED)
    rng = random.Random(HELD_OUT_SEED)
    rows = {
        PROBLEMS_FILE: [{"question": p.question, "answer": p.answer, "kind": p.kind} for p in problems],
        CHOICES_FILE: [choice_question(p, rng) for p in problems],
    }
    return {name: "".join(json.dumps(row) + "\n" for row in lines) for name, lines in rows.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=NUM_PROBLEMS)
    parser.add_argument("--output", type=Path, default=TASKS_DIR)
    args = parser.parse_args(argv)
    for name, text in data_files(args.problems).items():
        (args.output / name).write_text(text)
        print(f"wrote {args.output / name}")


if __name__ == "__main__":
    main()
