"""Every command line on bad input: exit status 2, one line on stderr naming the problem, no traceback, and
nothing of the user's files changed (every file under the inputs and outputs is hashed before and after).

The cases run in-process through each command's ``main(argv)``; a few run as a user would, in a subprocess.
The models are a tiny random teacher and its conversion (synthetic, built here in seconds).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import conversion.convert
import model_cards.card
import model_cards.hub
import recipes.demo
import recipes.distill_stage
import recipes.evaluate
import recipes.importance.__main__
import recipes.merge
import recipes.schedule
import recipes.sft
import recipes.tiny_teacher
from conversion import convert_checkpoint
from recipes.tiny_teacher import TinyTeacherSpec, ensure_tiny_teacher

REPO = Path(__file__).resolve().parents[1]
DISTILL_CONFIG = REPO / "recipes" / "configs" / "distill_tiny.yaml"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random teacher (with tokenizer) and its conversion with layer 1 made Mamba."""
    root = tmp_path_factory.mktemp("cli_models")
    spec = TinyTeacherSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           num_key_value_heads=1)
    teacher = ensure_tiny_teacher(root / "teacher", spec)
    student = root / "student"
    convert_checkpoint(teacher, student, [1], progress=False)
    return teacher, student


@dataclass
class Workspace:
    """The user's files of one case: copies of the models it may spoil, configs, and output paths."""

    root: Path
    teacher: Path
    student: Path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.root / name))

    def without_tokenizer(self, source: Path) -> Path:
        copy = self.copy(source, f"{source.name}-no-tokenizer")
        for name in TOKENIZER_FILES:
            (copy / name).unlink(missing_ok=True)
        return copy

    def with_bad_config(self, source: Path) -> Path:
        copy = self.copy(source, f"{source.name}-bad-config")
        (copy / "config.json").write_text('{"model_type": "mistral", "hidden_size": ')
        return copy

    def truncated(self, source: Path) -> Path:
        copy = self.copy(source, f"{source.name}-truncated")
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return copy

    def user_dir(self, name: str) -> Path:
        """An existing directory holding a file of the user's."""
        directory = self.root / name
        directory.mkdir()
        (directory / "notes.txt").write_text("the user's own file\n")
        return directory

    def empty_dir(self, name: str) -> Path:
        directory = self.root / name
        directory.mkdir()
        return directory

    def file(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def stage_config(self, **changes) -> Path:
        values = yaml.safe_load(DISTILL_CONFIG.read_text())
        values.update(teacher=str(self.teacher), student=str(self.student), output_dir=str(self.root / "distill"))
        values.update(changes)
        return self.file("stage.yaml", yaml.safe_dump(values))

    def schedule_config(self, **changes) -> Path:
        values = {"teacher": str(self.teacher), "output_dir": str(self.root / "schedule"), "targets": [1],
                  "distill_config": str(DISTILL_CONFIG)}
        values.update(changes)
        return self.file("schedule.yaml", yaml.safe_dump(values))

    @property
    def missing(self) -> Path:
        return self.root / "no-such-dir" / "model"


@dataclass(frozen=True)
class Case:
    main: Callable
    argv: Callable[[Workspace], list]
    words: tuple[str, ...]  # the message names the problem with these
    needs: str | None = None  # an optional package the command needs before it reads its inputs


CONVERT = conversion.convert.main
IMPORTANCE = recipes.importance.__main__.main
DISTILL = recipes.distill_stage.main
SCHEDULE = recipes.schedule.main

CASES = {
    # conversion.convert
    "convert: teacher dir does not exist": Case(CONVERT, lambda w: ["--teacher", w.missing, "--output", w.root / "out", "--mamba-layers", "1"], ("teacher", "does not exist")),
    "convert: teacher dir is empty": Case(CONVERT, lambda w: ["--teacher", w.empty_dir("empty"), "--output", w.root / "out", "--mamba-layers", "1"], ("has no config.json",)),
    "convert: config.json is not JSON": Case(CONVERT, lambda w: ["--teacher", w.with_bad_config(w.teacher), "--output", w.root / "out", "--mamba-layers", "1"], ("config.json is not valid JSON",)),
    "convert: truncated safetensors": Case(CONVERT, lambda w: ["--teacher", w.truncated(w.teacher), "--output", w.root / "out", "--mamba-layers", "1"], ("model.safetensors is not a complete safetensors file",)),
    "convert: output holds the user's files": Case(CONVERT, lambda w: ["--teacher", w.teacher, "--output", w.user_dir("out"), "--mamba-layers", "1"], ("already exists", "--overwrite")),
    "convert: malformed layer list": Case(CONVERT, lambda w: ["--teacher", w.teacher, "--output", w.root / "out", "--mamba-layers", "1,x"], ("not a comma-separated list",)),
    "convert: layer out of range": Case(CONVERT, lambda w: ["--teacher", w.teacher, "--output", w.root / "out", "--mamba-layers", "7"], ("layer 7 is out of range",)),
    "convert: every layer replaced": Case(CONVERT, lambda w: ["--teacher", w.teacher, "--output", w.root / "out", "--mamba-layers", "0,1,2"], ("no attention layer",)),
    "convert: importance file missing": Case(CONVERT, lambda w: ["--teacher", w.teacher, "--output", w.root / "out", "--num-mamba-layers", "1", "--importance", w.root / "loo.json"], ("loo.json does not exist",)),
    "convert: importance file is not JSON": Case(CONVERT, lambda w: ["--teacher", w.teacher, "--output", w.root / "out", "--num-mamba-layers", "1", "--importance", w.file("loo.json", "{ranking")], ("not valid JSON",)),
    # recipes.importance
    "importance loo: model dir does not exist": Case(IMPORTANCE, lambda w: ["loo", w.missing, "--output", w.root / "loo.json"], ("model", "does not exist")),
    "importance loo: model dir without tokenizer": Case(IMPORTANCE, lambda w: ["loo", w.without_tokenizer(w.teacher), "--output", w.root / "loo.json"], ("has no tokenizer",)),
    "importance loo: unknown metric": Case(IMPORTANCE, lambda w: ["loo", w.teacher, "--output", w.root / "loo.json", "--metric", "bleu", "--no-progress"], ("unknown metric 'bleu'",)),
    "importance loo: malformed layer range": Case(IMPORTANCE, lambda w: ["loo", w.teacher, "--output", w.root / "loo.json", "--layers", "1-x"], ("not a layer index or a range",)),
    "importance plot: ranking is not JSON": Case(IMPORTANCE, lambda w: ["plot", w.file("loo.json", "[1, 2")], ("loo.json is not valid JSON",)),
    "importance merge: state dir does not exist": Case(IMPORTANCE, lambda w: ["merge", "--state-dir", w.missing, "--output", w.root / "mmr.json"], ("not an MMR state directory",)),
    # recipes.distill_stage
    "distill: config file does not exist": Case(DISTILL, lambda w: ["--config", w.root / "stage.yaml"], ("stage config", "does not exist")),
    "distill: YAML syntax error": Case(DISTILL, lambda w: ["--config", w.file("stage.yaml", "teacher: [a, b\nstudent: c\n")], ("stage.yaml is not valid YAML", "line")),
    "distill: config is not key: value lines": Case(DISTILL, lambda w: ["--config", w.file("stage.yaml", "- teacher\n- student\n")], ("not key: value lines",)),
    "distill: unknown --set key": Case(DISTILL, lambda w: ["--config", w.stage_config(), "--set", "max_stepz=3"], ("Unknown config keys ['max_stepz']",)),
    "distill: --set without a value": Case(DISTILL, lambda w: ["--config", w.stage_config(), "--set", "max_steps"], ("not of the form key=value",)),
    "distill: --set value of the wrong type": Case(DISTILL, lambda w: ["--config", w.stage_config(), "--set", "max_steps=ten"], ("max_steps is 'ten'", "type int")),
    "distill: negative max_steps": Case(DISTILL, lambda w: ["--config", w.stage_config(), "--set", "max_steps=-5"], ("max_steps is -5", "from --set max_steps=-5", "above 0")),
    "distill: zero max_steps": Case(DISTILL, lambda w: ["--config", w.stage_config(), "--set", "max_steps=0"], ("max_steps is 0",)),
    "distill: max_steps below 1 in the file": Case(DISTILL, lambda w: ["--config", w.stage_config(max_steps=-1)], ("max_steps is -1", "stage.yaml")),
    "distill: student does not exist": Case(DISTILL, lambda w: ["--config", w.stage_config(student=str(w.missing))], ("student", "does not exist", "conversion.convert")),
    "distill: teacher without tokenizer": Case(DISTILL, lambda w: ["--config", w.stage_config(teacher=str(w.without_tokenizer(w.teacher)))], ("teacher", "has no tokenizer")),
    # recipes.schedule
    "schedule: YAML syntax error": Case(SCHEDULE, lambda w: ["--config", w.file("schedule.yaml", "teacher: {a\n")], ("schedule.yaml is not valid YAML",)),
    "schedule: unknown key": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(one_shoot=True)], ("unknown schedule keys ['one_shoot']",)),
    "schedule: teacher does not exist": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(teacher=str(w.missing))], ("teacher", "does not exist")),
    "schedule: targets not increasing": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(targets=[2, 1])], ("strictly increasing",)),
    "schedule: targets not a list": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(targets=3)], ("targets is 3",)),
    "schedule: --set into a plain key": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(), "--set", "teacher.path=x"], ("teacher is not a group of keys",)),
    "schedule: unknown distill key": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(distill={"max_stepz": 3})], ("unknown distill keys ['max_stepz']", "schedule.yaml")),
    "schedule: misspelt group in --set": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(), "--set", "distil.max_steps=10"], ("unknown schedule keys ['distil']", "from --set distil.max_steps=10")),
    "schedule: negative distill max_steps": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(), "--set", "distill.max_steps=-5"], ("max_steps is -5", "from --set distill.max_steps=-5")),
    "schedule: misspelt importance option": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(), "--set", "importance_options.metrc=kl"], ("importance_options.metrc", "from --set importance_options.metrc=kl", "unrecognized arguments")),
    "schedule: importance metric the text cannot give": Case(SCHEDULE, lambda w: ["--config", w.schedule_config(importance_options={"metric": "accuracy"})], ("importance_options.metric", "needs a multiple-choice file")),
    # recipes.sft
    "sft: model dir does not exist": Case(recipes.sft.main, lambda w: ["--model", w.missing, "--output-dir", w.root / "sft"], ("does not exist",)),
    "sft: model dir without tokenizer": Case(recipes.sft.main, lambda w: ["--model", w.without_tokenizer(w.student), "--output-dir", w.root / "sft"], ("has no tokenizer",)),
    "sft: unknown setting in the config": Case(recipes.sft.main, lambda w: ["--config", w.file("sft.yaml", "model: x\nlearning_rat: 1\n")], ("unknown SFT settings ['learning_rat']",)),
    "sft: YAML syntax error": Case(recipes.sft.main, lambda w: ["--config", w.file("sft.yaml", "model: 'x\n")], ("sft.yaml is not valid YAML",)),
    "sft: negative --max-steps": Case(recipes.sft.main, lambda w: ["--model", w.student, "--output-dir", w.root / "sft", "--max-steps", "-3"], ("max_steps is -3", "from --max-steps", "above 0")),
    "sft: zero max_steps in the config": Case(recipes.sft.main, lambda w: ["--config", w.file("sft.yaml", f"model: {w.student}\nmax_steps: 0\n")], ("max_steps is 0", "sft.yaml")),
    "sft: no model": Case(recipes.sft.main, lambda w: ["--max-steps", "1"], ("no model to fine-tune",)),
    # recipes.merge
    "merge: one checkpoint": Case(recipes.merge.main, lambda w: ["--checkpoints", w.student, "--output", w.root / "merged"], ("at least two checkpoints",)),
    "merge: wrong weight count": Case(recipes.merge.main, lambda w: ["--checkpoints", w.student, w.copy(w.student, "s2"), "--weights", "1", "--output", w.root / "merged"], ("got 1 weights for 2 checkpoints",)),
    "merge: checkpoint does not exist": Case(recipes.merge.main, lambda w: ["--checkpoints", w.student, w.missing, "--output", w.root / "merged"], ("does not exist",)),
    "merge: truncated checkpoint": Case(recipes.merge.main, lambda w: ["--checkpoints", w.student, w.truncated(w.student), "--output", w.root / "merged"], ("not a complete safetensors file",)),
    "merge: different layer patterns": Case(recipes.merge.main, lambda w: ["--checkpoints", w.student, w.teacher, "--output", w.root / "merged"], ("same attention/Mamba pattern",)),
    "merge: output holds the user's files": Case(recipes.merge.main, lambda w: ["--checkpoints", w.student, w.copy(w.student, "s2"), "--output", w.user_dir("merged")], ("already exists",)),
    # recipes.evaluate
    "evaluate: model dir does not exist": Case(recipes.evaluate.main, lambda w: ["--model", w.missing, "--output", w.root / "ev"], ("does not exist",), needs="lm_eval"),
    "evaluate: model dir without tokenizer": Case(recipes.evaluate.main, lambda w: ["--model", w.without_tokenizer(w.student), "--output", w.root / "ev"], ("has no tokenizer",), needs="lm_eval"),
    "evaluate: not a run manifest": Case(recipes.evaluate.main, lambda w: ["--manifest", w.file("run_manifest.json", "{}"), "--output", w.root / "ev"], ("is not a run manifest",), needs="lm_eval"),
    # recipes.tiny_teacher, recipes.demo
    "tiny_teacher: output holds the user's files": Case(recipes.tiny_teacher.main, lambda w: ["--output", w.user_dir("teacher")], ("already exists", "not a tiny teacher")),
    "tiny_teacher: hidden size the heads cannot split": Case(recipes.tiny_teacher.main, lambda w: ["--output", w.root / "teacher", "--hidden-size", "30"], ("--hidden-size is 30",)),
    "tiny_teacher: empty training batch": Case(recipes.tiny_teacher.main, lambda w: ["--output", w.root / "teacher", "--batch-size", "0"], ("--batch-size is 0",)),
    "demo: zero problems": Case(recipes.demo.main, lambda w: ["--output", w.root / "demo", "--problems", "0"], ("--problems",)),
    # model_cards
    "card: model dir does not exist": Case(model_cards.card.main, lambda w: ["--model", w.missing], ("does not exist",)),
    "card: manifest is not JSON": Case(model_cards.card.main, lambda w: ["--model", w.copy(w.student, "s"), "--manifest", w.file("run_manifest.json", "{")], ("run_manifest.json is not valid JSON",)),
    "card: config.json is not JSON": Case(model_cards.card.main, lambda w: ["--model", w.with_bad_config(w.student)], ("config.json is not valid JSON",)),
    "hub: not an Apriel-H1 model": Case(model_cards.hub.main, lambda w: ["--model", w.teacher, "--repo-id", "me/x", "--dry-run", w.root / "up"], ("'mistral' model",)),
    "hub: dry-run folder holds the user's files": Case(model_cards.hub.main, lambda w: ["--model", w.student, "--repo-id", "me/x", "--dry-run", w.user_dir("up")], ("already exists",)),
    "hub: manifest does not exist": Case(model_cards.hub.main, lambda w: ["--model", w.student, "--repo-id", "me/x", "--manifest", w.root / "m.json", "--dry-run", w.root / "up"], ("m.json does not exist",)),
    "hub: model dir does not exist": Case(model_cards.hub.main, lambda w: ["--model", w.missing, "--repo-id", "me/x", "--dry-run", w.root / "up"], ("does not exist",)),
}


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and directory under ``roots``, with the sha256 of each file."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def exit_status(main: Callable, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own errors
        return exit.code


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_and_status_2(name, models, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    if case.needs:
        pytest.importorskip(case.needs)
    workspace = Workspace(tmp_path, *models)
    argv = [str(part) for part in case.argv(workspace)]
    monkeypatch.chdir(tmp_path)  # outputs with default paths would land here, and show in the snapshot
    before = snapshot(tmp_path, *models)
    status = exit_status(case.main, argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and "Repo id" not in err, err
    message = err.strip().splitlines()[-1]
    assert "error: " in message and all(word in message for word in case.words), err
    assert snapshot(tmp_path, *models) == before


@pytest.mark.parametrize(
    "command, make_argv, words",
    [
        (["-m", "conversion.convert"], lambda w: ["--teacher", w.missing, "--output", w.root / "out", "--mamba-layers", "1"], "does not exist"),
        ([str(REPO / "recipes" / "distill_stage.py")], lambda w: ["--config", w.file("stage.yaml", "a: [1\n")], "is not valid YAML"),
        (["-m", "recipes.merge"], lambda w: ["--checkpoints", w.student, w.truncated(w.student), "--output", w.root / "m"],
         "not a complete safetensors file"),
    ],
    ids=["python -m conversion.convert", "python recipes/distill_stage.py", "python -m recipes.merge"],
)
def test_a_user_running_the_command_sees_one_line_and_status_2(command, make_argv, words, models, tmp_path):
    workspace = Workspace(tmp_path, *models)
    argv = [str(part) for part in make_argv(workspace)]
    before = snapshot(tmp_path, *models)
    result = subprocess.run([sys.executable, *command, *argv], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert snapshot(tmp_path, *models) == before
