"""benchmarks/ssm_state_precision.py on a CPU: both state dtypes decode every problem, and a model without Mamba
layers is refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import MistralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import ssm_state_precision  # noqa: E402
from modeling_apriel_h1 import AprielH1ForCausalLM  # noqa: E402
from recipes.tiny_teacher import build_tokenizer  # noqa: E402
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
    assert 0.0 <= row["identical_generations"] <= 1.0 and row["mamba_layers"] > 0


def test_a_model_without_mamba_layers_is_refused_in_one_line(tmp_path, capsys):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    MistralForCausalLM(tiny_mistral_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "teacher")
    capsys.readouterr()  # the fixture's own progress bars
    status = ssm_state_precision.main(["--models", str(tmp_path / "teacher"), "--tokenizer", str(tmp_path / "tokenizer"),
                                       "--problems", "2", "--max-new-tokens", "2"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("error: ") and "no Mamba layers" in error and "\n" not in error
