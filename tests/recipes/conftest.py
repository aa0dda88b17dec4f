"""Tiny teacher, hybrid student and data shared by the recipe tests (all built on the CPU in the test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from conversion import convert_checkpoint, convert_model
from modeling_apriel_h1 import AprielH1ForCausalLM
from recipes.tiny_teacher import ensure_tiny_teacher
from recipes.training.data import build_dataset, load_conversations

MAMBA_LAYERS = [1, 3]


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_teacher(tmp_path_factory.mktemp("tiny") / "teacher")


@pytest.fixture(scope="session")
def tokenizer(teacher_dir: Path):
    return AutoTokenizer.from_pretrained(teacher_dir)


def load_teacher(teacher_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(teacher_dir)


def hybrid_student(teacher: PreTrainedModel) -> AprielH1ForCausalLM:
    """The teacher converted in memory, layers 1 and 3 made Mamba (MIL init), in training mode."""
    return convert_model(teacher, MAMBA_LAYERS).train()


@pytest.fixture(scope="session")
def student_dir(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher converted on disk, as ``python -m conversion.convert`` writes it (with conversion.json)."""
    directory = tmp_path_factory.mktemp("tiny") / "student"
    convert_checkpoint(teacher_dir, directory, MAMBA_LAYERS, progress=False)
    return directory


@pytest.fixture(scope="session")
def train_dataset(tokenizer):
    return build_dataset(load_conversations("synthetic", synthetic_examples=64, seed=0), tokenizer, 192, packing=False)
