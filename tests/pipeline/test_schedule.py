"""The staged schedule runs two tiny stages end to end (real text mixed into their data) and resumes after being
killed mid-stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoConfig

from recipes.schedule import resolve_targets, scaled_paper_targets, ScheduleConfig
from recipes.tiny_teacher import TinyTeacherSpec, ensure_tiny_teacher

SPEC = TinyTeacherSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1)
REPO = Path(__file__).resolve().parents[2]


def _command(teacher: Path, output: Path, corpus: Path) -> list[str]:
    overrides = {
        "distill.text_data": str(corpus), "distill.text_share": "0.25",
        "teacher": str(teacher), "output_dir": str(output), "targets": "[1, 2]",
        "importance_options.num_texts": "4", "importance_options.max_length": "64",
        "mmr_options.steps": "2", "mmr_options.max_length": "160", "mmr_options.eval_batches": "1",
        "distill.max_steps": "6", "distill.save_steps": "2", "distill.logging_steps": "1",
        "distill.synthetic_examples": "48", "distill.max_seq_length": "160", "distill.per_device_batch_size": "4",
    }
    command = [sys.executable, "-m", "recipes.schedule", "--config", "recipes/configs/schedule_tiny.yaml"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    return command


def test_paper_targets_scale_to_the_teacher_depth():
    assert scaled_paper_targets(50) == [25, 27, 30, 34, 37, 40]
    assert scaled_paper_targets(8) == [4, 5, 6]
    assert scaled_paper_targets(2) == [1]
    config = ScheduleConfig(teacher="t", output_dir="o", targets=[2, 5], one_shot=True)
    assert resolve_targets(config, 8, 0) == [5]
    with pytest.raises(ValueError, match="strictly increasing"):
        resolve_targets(ScheduleConfig(teacher="t", output_dir="o", targets=[3, 3]), 8, 0)
    with pytest.raises(ValueError, match="at least one attention layer stays"):
        resolve_targets(ScheduleConfig(teacher="t", output_dir="o", targets=[8]), 8, 0)


@pytest.mark.slow
def test_schedule_runs_two_stages_and_resumes_after_a_kill(tmp_path):
    teacher = ensure_tiny_teacher(tmp_path / "teacher", SPEC)
    output = tmp_path / "run"
    corpus = tmp_path / "corpus.txt"  # real text mixed into every stage's data at a quarter of the tokens
    corpus.write_text("\n\n".join(f"Paragraph {n} of plain text, learned on every token." for n in range(40)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_command(teacher, output, corpus), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # any complete checkpoint of stage 1 (the Trainer rotates old ones out, so a fixed one can come and go
    # between two looks on a fast machine)
    checkpoints = output / "stage-1" / "distill"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("checkpoint-*/checkpoint_state.json")) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(checkpoints.glob("checkpoint-*/checkpoint_state.json")), (
        process.stderr.read().decode()[-3000:] if process.poll() is not None else "timed out")
    process.send_signal(signal.SIGKILL)
    process.wait()
    manifest = json.loads((output / "run_manifest.json").read_text())
    assert manifest["stages"][0]["status"] == "distilling"
    ranking = output / "stage-1" / "importance_loo.json"
    ranking_mtime = ranking.stat().st_mtime_ns

    finished = subprocess.run(_command(teacher, output, corpus), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    manifest = json.loads((output / "run_manifest.json").read_text())
    assert [stage["status"] for stage in manifest["stages"]] == ["done", "done"]
    assert ranking.stat().st_mtime_ns == ranking_mtime  # the finished ranking was not recomputed
    first, second = manifest["stages"]
    assert first["importance_method"] == "loo" and second["importance_method"] == "mmr"
    assert len(first["mamba_layers"]) == 1 and len(second["mamba_layers"]) == 2
    assert set(first["mamba_layers"]) < set(second["mamba_layers"])
    assert first["steps"] == 6 and first["tokens"] > 0
    for stage in (first, second):
        assert stage["text_mix"]["text_data"] == str(corpus) and stage["text_mix"]["text_rows"] > 0
        assert abs(stage["text_mix"]["text_share_of_tokens"] - 0.25) < 0.05
    stage_one_log = json.loads((output / "stage-1" / "distill" / "checkpoint-6" / "trainer_state.json").read_text())
    logged_steps = [entry["step"] for entry in stage_one_log["log_history"] if "kd_loss" in entry]
    assert logged_steps == sorted(set(logged_steps))  # resumed, not restarted: no step logged twice
    final = AutoConfig.from_pretrained(manifest["final_checkpoint"])
    assert [i for i, kind in enumerate(final.layer_types) if kind == "linear_attention"] == second["mamba_layers"]
    assert (output / "stage-2" / "importance_mmr.png").stat().st_size > 0
