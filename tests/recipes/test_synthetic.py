"""The bundled synthetic reasoning traces: deterministic, and every worked solution checks out."""

from __future__ import annotations

import re

from recipes.training.synthetic import extract_answer, generate_problems, is_correct, synthetic_conversations

_ARITHMETIC_STEP = re.compile(r"^(-?\d+) ([-+*]) (-?\d+) = (-?\d+)$")
_OPERATIONS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}


def _check_arithmetic_steps(steps: tuple[str, ...], answer: str) -> None:
    """Every step is a correct operation on the previous result, and the last result is the answer."""
    previous = None
    for step in steps:
        left, operator, right, result = _ARITHMETIC_STEP.match(step).groups()
        assert _OPERATIONS[operator](int(left), int(right)) == int(result), step
        assert previous is None or int(left) == previous, "each step continues from the previous result"
        previous = int(result)
    assert str(previous) == answer


def _solve_independently(problem) -> str:
    """Solve from the question text alone (no use of the generator's steps)."""
    if problem.kind == "arithmetic":
        expression = re.match(r"Compute (.+)\. Work", problem.question).group(1)
        return str(eval(expression, {"__builtins__": {}}))  # digits, parentheses and + - * only
    if problem.kind == "logic":
        values = dict(re.findall(r"([ABC]) is (True|False)", problem.question))
        expression = re.search(r"evaluate (.+)\.$", problem.question).group(1)
        return str(eval(expression, {"__builtins__": {}}, {k: v == "True" for k, v in values.items()}))
    if problem.kind == "ordering":
        pairs = re.findall(r"(\w+) is \w+ than (\w+)\.", problem.question)
        losers = {smaller for _, smaller in pairs}
        (top,) = {bigger for bigger, _ in pairs} - losers
        return top
    numbers = [int(n) for n in re.findall(r"\d+", problem.question)]
    start, bought, given, boxes = numbers
    return str((start + bought - given) * boxes)


def test_same_seed_gives_the_same_problems_and_another_seed_other_ones():
    assert synthetic_conversations(50, seed=3) == synthetic_conversations(50, seed=3)
    assert synthetic_conversations(50, seed=3) != synthetic_conversations(50, seed=4)


def test_every_kind_appears_and_every_answer_verifies():
    problems = generate_problems(400, seed=7)
    assert {p.kind for p in problems} == {"arithmetic", "word", "ordering", "logic"}
    for problem in problems:
        assert _solve_independently(problem) == problem.answer, problem.question
        if problem.kind in ("arithmetic", "word"):
            _check_arithmetic_steps(problem.steps, problem.answer)


def test_scoring_reads_the_final_answer_line():
    problem = generate_problems(1, seed=0)[0]
    assert is_correct(problem.solution(), problem.answer)
    assert extract_answer("Step 1: 2 + 2 = 4\nAnswer: 4\nAnswer: 5") == "5"
    assert extract_answer("I do not know.") is None
    assert not is_correct(problem.solution().replace(f"Answer: {problem.answer}", "Answer: x"), problem.answer)


def test_rows_are_chats_with_the_solution_as_the_assistant_turn():
    row = synthetic_conversations(1, seed=0)[0]
    user, assistant = row["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert extract_answer(assistant["content"]) == row["answer"]
