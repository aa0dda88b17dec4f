"""Outputs written atomically get the modes the user's umask gives any other new file or directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conversion import convert_checkpoint
from conversion.atomic_io import staged_output_dir, write_text_atomically
from recipes.tiny_teacher import TinyTeacherSpec, ensure_tiny_teacher


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=["umask-022", "umask-002", "umask-077"])
def test_a_staged_directory_and_its_files_follow_the_umask(mask, umask, tmp_path):
    umask(mask)
    with staged_output_dir(tmp_path / "out") as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
    write_text_atomically(tmp_path / "out" / "record.json", "{}")
    assert mode(tmp_path / "out") == 0o777 & ~mask
    assert mode(tmp_path / "out" / "model.safetensors") == 0o666 & ~mask
    assert mode(tmp_path / "out" / "record.json") == 0o666 & ~mask


def test_a_converted_checkpoint_is_readable_by_others_under_umask_022(umask, tmp_path):
    umask(0o022)
    spec = TinyTeacherSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1)
    teacher = ensure_tiny_teacher(tmp_path / "teacher", spec)
    convert_checkpoint(teacher, tmp_path / "student", [1], progress=False)
    assert mode(tmp_path / "student") == 0o755
    assert {mode(path) for path in (tmp_path / "student").iterdir()} == {0o644}
