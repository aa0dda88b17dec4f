"""The shared command-line error handling (cli/__init__.py): one line and status 2 for bad input, a traceback
for bugs, and the checks that name a bad file before transformers or the Hub client see it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from cli import (
    UsageError,
    check_safetensors_file,
    command_line,
    looks_like_hub_id,
    model_source,
    read_json,
    read_yaml_mapping,
)


def _failing(error: BaseException):
    @command_line
    def main(argv=None):
        raise error

    return main


@pytest.mark.parametrize(
    "error, words",
    [
        (UsageError("the thing is wrong;\n  do this instead"), "the thing is wrong; do this instead"),
        (ValueError("bad value"), "bad value"),
        (FileNotFoundError(2, "No such file or directory", "/no/such/file"), "/no/such/file does not exist"),
        (json.JSONDecodeError("Expecting value", "x", 0), "not valid JSON"),
        (yaml.YAMLError("mapping values are not allowed"), "not valid YAML"),
    ],
)
def test_an_input_error_is_one_line_and_status_2(error, words, capsys):
    assert _failing(error)([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {captured.err.removeprefix('error: ').strip()}\n"  # exactly one line
    assert words in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("bug", [RuntimeError("shape mismatch"), KeyError("x"), TypeError("t"), AssertionError()])
def test_a_bug_keeps_its_traceback(bug):
    with pytest.raises(type(bug)):
        _failing(bug)([])


def test_the_traceback_variable_shows_an_input_errors_traceback(monkeypatch):
    monkeypatch.setenv("APRIEL_H1_TRACEBACK", "1")
    with pytest.raises(UsageError):
        _failing(UsageError("x"))([])


def test_an_interrupt_is_one_line_and_status_130(capsys):
    assert _failing(KeyboardInterrupt())([]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_command_run_inside_another_reports_its_error_once(capsys):
    inner = _failing(UsageError("inner problem"))

    @command_line
    def outer(argv=None):
        inner([])
        raise AssertionError("the inner error must reach the outer command")

    assert outer([]) == 2
    assert capsys.readouterr().err == "error: inner problem\n"


def test_success_returns_what_main_returns():
    assert command_line(lambda argv=None: None)([]) is None
    assert command_line(lambda argv=None: 0)([]) == 0


def test_safetensors_check_accepts_a_whole_file_and_names_a_truncated_one(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(64), "b": torch.ones(3, 5)}, path)
    check_safetensors_file(path)
    whole = path.read_bytes()
    for cut, problem in ((len(whole) - 7, "header lists"), (20, "header is cut short"), (4, "header is cut short")):
        path.write_bytes(whole[:cut])
        with pytest.raises(UsageError, match=f"{path}.*not a complete safetensors file.*{problem}"):
            check_safetensors_file(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a json head!")
    with pytest.raises(UsageError, match="not a safetensors header"):
        check_safetensors_file(path)


def test_hub_ids_and_local_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_hub_id("gpt2") and looks_like_hub_id("ServiceNow-AI/Apriel-H1-15b")
    for local in ("/tmp/missing", "./model", "~/model", "runs/student", "a/b/c", "../x", "a--b/c"):
        assert not looks_like_hub_id(local), local


def test_model_source_names_what_is_missing(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(UsageError, match=f"the student {missing} does not exist; create it with: make it"):
        model_source(missing, "student", "make it", hub=True)
    directory = tmp_path / "model"
    directory.mkdir()
    with pytest.raises(UsageError, match="has no config.json"):
        model_source(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="config.json is not valid JSON"):
        model_source(directory)
    (directory / "config.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="is not a JSON object"):
        model_source(directory)
    (directory / "config.json").write_text('{"model_type": "mistral"}')
    with pytest.raises(UsageError, match="has no weights"):
        model_source(directory)
    save_file({"a": torch.zeros(4)}, directory / "model.safetensors")
    assert model_source(directory) == str(directory)
    with pytest.raises(UsageError, match="has no tokenizer"):
        model_source(directory, tokenizer=True)
    (directory / "tokenizer.json").write_text("{}")
    assert model_source(directory, tokenizer=True) == str(directory)
    assert model_source("some-org/some-model", hub=True) == "some-org/some-model"  # left to the Hub client


def test_readers_name_the_file_and_the_problem(tmp_path):
    config = tmp_path / "stage.yaml"
    with pytest.raises(UsageError, match=f"the stage config {config} does not exist"):
        read_yaml_mapping(config, "stage config")
    config.write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match=f"the stage config {config} is not valid YAML .*line"):
        read_yaml_mapping(config, "stage config")
    config.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="holds a list, not key: value lines"):
        read_yaml_mapping(config, "stage config")
    config.write_text("")
    assert read_yaml_mapping(config, "stage config") == {}
    manifest = tmp_path / "run_manifest.json"
    manifest.write_text('{"stages": [')
    with pytest.raises(UsageError, match=f"the manifest {manifest} is not valid JSON"):
        read_json(manifest, "manifest")
