"""benchmarks/score_models.py: the study's quality measures for any checkpoints against their teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import score_models  # noqa: E402
from conversion.convert import main as convert  # noqa: E402
from tests.benchmarks.test_method_study_smollm2 import smollm2_stand_in  # noqa: E402


def test_the_teacher_scores_zero_kl_and_a_converted_hybrid_does_not(tmp_path):
    teacher = smollm2_stand_in(tmp_path / "teacher", layers=4)
    convert(["--teacher", str(teacher), "--output", str(tmp_path / "hybrid"), "--mamba-layers", "1,2", "--no-progress"])
    out = tmp_path / "scores.json"
    assert score_models.main(["--teacher", str(teacher), "--model", f"hybrid={tmp_path / 'hybrid'}", "--problems", "3",
                              "--real-text-tokens", "200", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["models"]
    assert rows["teacher"]["kl_to_teacher"] == 0.0 and rows["teacher"]["mamba_layers"] == 0
    assert rows["hybrid"]["kl_to_teacher"] > 0 and rows["hybrid"]["mamba_layers"] == 2
    assert rows["hybrid"]["real_text_perplexity"] != rows["teacher"]["real_text_perplexity"]
    assert rows["hybrid"]["real_text_tokens"] == rows["teacher"]["real_text_tokens"] > 100


def test_a_model_without_a_name_is_one_clear_error(tmp_path, capsys):
    teacher = smollm2_stand_in(tmp_path / "teacher", layers=2)
    capsys.readouterr()
    assert score_models.main(["--teacher", str(teacher), "--model", str(teacher), "--json",
                              str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err.startswith("error: --model") and not (tmp_path / "s.json").exists()
