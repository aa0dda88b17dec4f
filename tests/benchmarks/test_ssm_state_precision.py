"""benchmarks/ssm_state_precision.py on a CPU: both state dtypes decode every problem, the row counts identical
generations and exact matches over the problems, and a model without Mamba layers is refused in one line."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

from transformers import MistralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import ssm_state_precision  # noqa: E402
from modeling_apriel_h1 import AprielH1ForCausalLM  # noqa: E402
from recipes.tiny_teacher import build_tokenizer  # noqa: E402
from recipes.training.held_out import HELD_OUT_SEED  # noqa: E402
from recipes.training.synthetic import generate_problems  # noqa: E402
from tests.modeling.tiny import tiny_config, tiny_mistral_config  # noqa: E402


def test_each_state_dtype_answers_every_problem(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    AprielH1ForCausalLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "hybrid")
    status = ssm_state_precision.main(["--models", str(tmp_path / "hybrid"), "--tokenizer", str(tmp_path / "tokenizer"),
                                       "--problems", "3", "--max-new-tokens", "4", "--batch", "2",
                                       "--json", str(tmp_path / "rows.json")])
    assert status == 0
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert set(row["exact_match"]) == {"float32", "bfloat16"} and row["num_problems"] == 3
    assert row["mamba_layers"] == 2 and row["num_layers"] == 4
    assert row["identical_generations"] * 3 == round(row["identical_generations"] * 3)  # a count of the 3 problems


def test_identical_generations_and_exact_match_count_each_problem(tmp_path, monkeypatch):
    """Given generations that differ on one problem of three, and answer one problem right only with the fp32
    state: identical on 2/3, exact match 1/3 (fp32) and 0 (bf16)."""
    tokenizer = build_tokenizer()
    AprielH1ForCausalLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "hybrid")
    problems = generate_problems(3, HELD_OUT_SEED)
    right = tokenizer(f"Answer: {problems[0].answer}", add_special_tokens=False)["input_ids"]
    wrong = tokenizer("no idea", add_special_tokens=False)["input_ids"]
    generations = {"float32": [right, wrong, wrong], "bfloat16": [wrong, wrong, wrong]}
    states = []

    def fake_answers(model, tokenizer, problems, max_new_tokens, batch, state_dtype):
        name = {value: key for key, value in ssm_state_precision.STATE_DTYPES.items()}[state_dtype]
        states.append(name)
        return generations[name]

    monkeypatch.setattr(ssm_state_precision, "greedy_answers", fake_answers)
    args = Namespace(dtype="float32", max_new_tokens=4, batch=2)
    row = ssm_state_precision.compare_state_dtypes(tmp_path / "hybrid", tokenizer, problems, args)
    assert sorted(states) == ["bfloat16", "float32"]
    assert row["identical_generations"] == 2 / 3
    assert row["exact_match"] == {"float32": 1 / 3, "bfloat16": 0.0}


def test_a_model_without_mamba_layers_is_refused_in_one_line(tmp_path, capsys):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    MistralForCausalLM(tiny_mistral_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "teacher")
    capsys.readouterr()  # the fixture's own progress bars
    status = ssm_state_precision.main(["--models", str(tmp_path / "teacher"), "--tokenizer", str(tmp_path / "tokenizer"),
                                       "--problems", "2", "--max-new-tokens", "2"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("error: ") and "no Mamba layers" in error and "\n" not in error
