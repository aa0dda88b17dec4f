"""distill_stage.py end to end, its config handling, and its refusal of mismatched models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import UsageError
from conversion import convert_checkpoint
from recipes.distill_stage import main as distill_main
from recipes.distill_stage import run_stage
from recipes.tiny_teacher import TinyTeacherSpec, build_tokenizer, ensure_tiny_teacher
from recipes.training.checkpoints import STATE_FILE, read_checkpoint_state
from recipes.training.stage_config import load_stage_config

from .conftest import MAMBA_LAYERS, hybrid_student, load_teacher

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "recipes" / "configs" / "distill_tiny.yaml"
QUICK = ["synthetic_examples=40", "eval_examples=4", "max_steps=4", "save_steps=2", "eval_steps=4", "logging_steps=1",
         "per_device_batch_size=2", "max_seq_length=192"]


def run_script(tmp_path: Path, overrides: list[str], *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "recipes" / "distill_stage.py"), "--config", str(TINY_CONFIG), *flags]
    command += [argument for override in overrides for argument in ("--set", override)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_tiny_config_runs_end_to_end_as_a_script_and_resumes(teacher_dir, student_dir, tmp_path):
    run = tmp_path / "run"
    overrides = [f"teacher={teacher_dir}", f"student={student_dir}", f"output_dir={run}", *QUICK]
    result = run_script(tmp_path, overrides)
    assert "Distillation stage finished" in result.stdout
    assert (run / "final" / "model.safetensors").is_file()
    assert read_checkpoint_state(run / "final")["global_step"] == 4
    assert read_checkpoint_state(run / "checkpoint-4")["num_input_tokens_seen"] > 0

    (run / "checkpoint-4" / STATE_FILE).unlink()  # as if killed while writing checkpoint-4
    result = run_script(tmp_path, overrides, "--resume")
    assert f"resuming from {run / 'checkpoint-2'}" in result.stdout
    assert read_checkpoint_state(run / "final")["global_step"] == 4


def test_every_config_key_must_be_known_and_present(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown config keys \['learning_rat'\]"):
        load_stage_config(TINY_CONFIG, ["learning_rat=1e-4"])
    partial = tmp_path / "partial.yaml"
    partial.write_text("teacher: t\n")
    with pytest.raises(ValueError, match="lacks keys"):
        load_stage_config(partial)
    assert load_stage_config(TINY_CONFIG, ["packing=true", "save_total_limit=null"]).packing is True


def stage_config(teacher, student, output_dir, *extra):
    overrides = [f"teacher={teacher}", f"student={student}", f"output_dir={output_dir}", *QUICK, *extra]
    return load_stage_config(TINY_CONFIG, overrides)


def test_a_student_converted_from_another_teacher_is_refused(teacher_dir, tmp_path):
    other_teacher = ensure_tiny_teacher(tmp_path / "other", TinyTeacherSpec(seed=0, num_hidden_layers=5))
    student = tmp_path / "student"
    convert_checkpoint(other_teacher, student, MAMBA_LAYERS, progress=False)
    with pytest.raises(ValueError, match="is not a conversion of this teacher"):
        run_stage(stage_config(teacher_dir, student, tmp_path / "run"), resume=False)


def test_a_student_of_another_width_is_refused(teacher_dir, tmp_path):
    wider_teacher = ensure_tiny_teacher(tmp_path / "wide", TinyTeacherSpec(hidden_size=96, intermediate_size=192))
    student = tmp_path / "student"
    hybrid_student(load_teacher(wider_teacher)).save_pretrained(student)  # no conversion.json to go by
    with pytest.raises(ValueError, match=r"student's hidden_size \(96\) differs from the teacher's \(64\)"):
        run_stage(stage_config(teacher_dir, student, tmp_path / "run"), resume=False)


def test_a_student_with_another_tokenizer_is_refused(teacher_dir, student_dir, tmp_path):
    student = tmp_path / "student"  # the same weights ...
    student.mkdir()
    for path in student_dir.iterdir():
        if not path.name.startswith(("tokenizer", "conversion")):
            (student / path.name).symlink_to(path)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<|tool|>"])  # ... with a tokenizer of one more token
    tokenizer.save_pretrained(student)
    with pytest.raises(ValueError, match="student's tokenizer .* differs from the teacher's"):
        run_stage(stage_config(teacher_dir, student, tmp_path / "run"), resume=False)


def test_a_missing_student_names_the_command_that_makes_it(teacher_dir, tmp_path):
    with pytest.raises(UsageError, match="student .* does not exist; create it with: python -m conversion.convert"):
        run_stage(stage_config(teacher_dir, tmp_path / "nowhere" / "student", tmp_path / "run"), resume=False)


def test_a_first_run_says_nothing_of_resuming_unless_resume_was_given(teacher_dir, student_dir, tmp_path, capsys):
    one_step = ["max_steps=1", "save_steps=1", "eval_examples=0"]
    run_stage(stage_config(teacher_dir, student_dir, tmp_path / "scheduled", *one_step), resume=True)  # as the schedule
    assert "resum" not in capsys.readouterr().out
    overrides = [f"teacher={teacher_dir}", f"student={student_dir}", f"output_dir={tmp_path / 'asked'}", *QUICK, *one_step]
    assert distill_main(["--config", str(TINY_CONFIG), "--resume", *(f"--set={item}" for item in overrides)]) is None
    assert f"--resume: no complete checkpoint in {tmp_path / 'asked'}, starting anew" in capsys.readouterr().out
