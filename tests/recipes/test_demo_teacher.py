"""The demo's shipped teacher: small, made by its recorded command, loads from the package, solves problems."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict

from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes.demo import TEACHER_COMMAND, TEACHER_DIR
from recipes.tiny_teacher import STAMP_FILE, build_parser, spec_from_arguments
from recipes.training.held_out import HELD_OUT_SEED, score_on_problems
from recipes.training.synthetic import generate_problems

MAX_TEACHER_BYTES = 10 * 2**20


def test_shipped_teacher_is_small_and_records_its_command():
    stamp = json.loads((TEACHER_DIR / STAMP_FILE).read_text())
    arguments = shlex.split(TEACHER_COMMAND)[3:]  # after "python -m recipes.tiny_teacher"
    assert asdict(spec_from_arguments(build_parser().parse_args(arguments))) == stamp
    weights = list(TEACHER_DIR.glob("*.safetensors"))
    assert weights and sum(path.stat().st_size for path in weights) <= MAX_TEACHER_BYTES


def test_shipped_teacher_solves_held_out_problems():
    """It solved 68% of these 128 held-out problems when shipped; the demo's goal is a teacher above 30%."""
    tokenizer = AutoTokenizer.from_pretrained(TEACHER_DIR)
    model = AutoModelForCausalLM.from_pretrained(TEACHER_DIR)
    problems = generate_problems(128, HELD_OUT_SEED)  # the demo's own held-out problems
    score = score_on_problems(model, tokenizer, problems, max_new_tokens=160, batch_size=64, progress=False)
    assert score.accuracy >= 0.30, score
