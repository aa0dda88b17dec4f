"""Synthetic multi-step reasoning traces, the recipe's built-in data set.

The distillation recipe must run with no download, and the end-to-end demo must be able to tell whether a
distilled model still reasons. So the default data are small problems (chained arithmetic, word problems,
ordering puzzles, boolean logic) whose assistant turn is a step-by-step solution ending in a line
``Answer: <value>``. Every problem carries its exact answer, so a model's completion on held-out problems
(a different seed) can be scored with :func:`is_correct`.

Everything is a pure function of the seed: the same seed gives the same problems on every machine.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ANSWER_PREFIX = "Answer:"
_ANSWER_PATTERN = re.compile(rf"^{ANSWER_PREFIX}\s*(.+?)\s*$", re.MULTILINE)

_NAMES = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi")
_ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stamps")
_COMPARISONS = (("taller", "tallest"), ("older", "oldest"), ("faster", "fastest"))
_OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Problem:
    """One problem: the question, the worked steps, and the exact final answer (as text)."""

    kind: str
    question: str
    steps: tuple[str, ...]
    answer: str

    def solution(self) -> str:
        """The assistant's reply: numbered steps, then the answer line that :func:`extract_answer` reads."""
        lines = [f"Step {i}: {step}" for i, step in enumerate(self.steps, start=1)]
        return "\n".join([*lines, f"{ANSWER_PREFIX} {self.answer}"])

    def messages(self) -> list[dict[str, str]]:
        """The problem as a chat: one user turn, one assistant turn."""
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.solution()}]


def _chained_arithmetic(rng: random.Random) -> Problem:
    """((a op b) op c) op d, solved left to right one operation per step."""
    value = rng.randint(2, 20)
    expression = str(value)
    steps = []
    for index in range(rng.randint(2, 4)):
        symbol = rng.choice(tuple(_OPERATORS))
        operand = rng.randint(2, 9) if symbol == "*" else rng.randint(1, 30)
        result = _OPERATORS[symbol](value, operand)
        steps.append(f"{value} {symbol} {operand} = {result}")
        expression = f"({expression}) {symbol} {operand}" if index else f"{expression} {symbol} {operand}"
        value = result
    question = f"Compute {expression}. Work from the innermost parentheses out."
    return Problem("arithmetic", question, tuple(steps), str(value))


def _word_problem(rng: random.Random) -> Problem:
    """A count that is bought, given away and multiplied: arithmetic hidden in a story."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, bought, boxes = rng.randint(3, 40), rng.randint(1, 20), rng.randint(2, 5)
    given = rng.randint(1, start + bought)
    after_buying = start + bought
    after_giving = after_buying - given
    total = after_giving * boxes
    question = (
        f"{name} has {start} {item}. {name} buys {bought} more, then gives {given} away. "
        f"Then {name} fills {boxes} boxes with as many {item} as are left in each. How many {item} are in the boxes?"
    )
    steps = (
        f"{start} + {bought} = {after_buying}",
        f"{after_buying} - {given} = {after_giving}",
        f"{after_giving} * {boxes} = {total}",
    )
    return Problem("word", question, steps, str(total))


def _ordering_puzzle(rng: random.Random) -> Problem:
    """A shuffled chain of pairwise comparisons; the answer is the top of the chain."""
    people = rng.sample(_NAMES, rng.randint(3, 5))  # people[0] is the greatest
    comparative, superlative = rng.choice(_COMPARISONS)
    facts = [f"{people[i]} is {comparative} than {people[i + 1]}." for i in range(len(people) - 1)]
    rng.shuffle(facts)
    steps = [f"{people[i]} is {comparative} than {people[i + 1]}." for i in reversed(range(len(people) - 1))]
    steps.append(f"So the order is {' > '.join(people)}.")
    question = f"{' '.join(facts)} Who is the {superlative}?"
    return Problem("ordering", question, tuple(steps), people[0])


def _boolean_logic(rng: random.Random) -> Problem:
    """Evaluate (X op Y) op2 (not Z) from given truth values, one sub-expression per step."""
    values = {name: rng.choice((True, False)) for name in ("A", "B", "C")}
    first, second = rng.choice(("and", "or")), rng.choice(("and", "or"))
    left = values["A"] and values["B"] if first == "and" else values["A"] or values["B"]
    negated = not values["C"]
    result = left and negated if second == "and" else left or negated
    givens = ", ".join(f"{name} is {value}" for name, value in values.items())
    question = f"Given {givens}, evaluate (A {first} B) {second} (not C)."
    steps = (
        f"A {first} B = {values['A']} {first} {values['B']} = {left}",
        f"not C = not {values['C']} = {negated}",
        f"{left} {second} {negated} = {result}",
    )
    return Problem("logic", question, steps, str(result))


_GENERATORS = (_chained_arithmetic, _word_problem, _ordering_puzzle, _boolean_logic)


def generate_problems(num_problems: int, seed: int) -> list[Problem]:
    """``num_problems`` problems, cycling through the kinds in a seed-determined order."""
    rng = random.Random(seed)
    return [rng.choice(_GENERATORS)(rng) for _ in range(num_problems)]


def synthetic_conversations(num_problems: int, seed: int) -> list[dict]:
    """Rows in the recipe's chat format (``messages``) with the exact ``answer`` kept for scoring."""
    problems = generate_problems(num_problems, seed)
    return [{"messages": p.messages(), "answer": p.answer, "kind": p.kind} for p in problems]


def extract_answer(completion: str) -> str | None:
    """The value on the last ``Answer:`` line of a completion, or None when the model gave none."""
    matches = _ANSWER_PATTERN.findall(completion)
    return matches[-1] if matches else None


def is_correct(completion: str, answer: str) -> bool:
    """Whether a completion's final answer equals the problem's exact answer."""
    return extract_answer(completion) == answer
