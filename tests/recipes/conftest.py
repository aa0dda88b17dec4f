"""Tiny teacher, hybrid student and data shared by the recipe tests (all built on the CPU in the test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM
from recipes.data import build_dataset, load_conversations
from recipes.tiny_teacher import ensure_tiny_teacher

MAMBA_LAYERS = (1, 3)
_SHARED_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id",
)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_teacher(tmp_path_factory.mktemp("tiny") / "teacher")


@pytest.fixture(scope="session")
def tokenizer(teacher_dir: Path):
    return AutoTokenizer.from_pretrained(teacher_dir)


def load_teacher(teacher_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(teacher_dir)


def hybrid_student(teacher: PreTrainedModel, mamba_layers=MAMBA_LAYERS, seed: int = 0) -> AprielH1ForCausalLM:
    """The teacher's weights in an Apriel-H1 hybrid whose ``mamba_layers`` have fresh Mamba mixers."""
    torch.manual_seed(seed)
    fields = {name: getattr(teacher.config, name) for name in _SHARED_CONFIG_FIELDS}
    layer_types = ["mamba" if i in mamba_layers else "attention" for i in range(teacher.config.num_hidden_layers)]
    student = AprielH1ForCausalLM(AprielH1Config(**fields, layer_types=layer_types))
    student.load_state_dict(teacher.state_dict(), strict=False)
    return student


@pytest.fixture(scope="session")
def student_dir(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "student"
    hybrid_student(load_teacher(teacher_dir)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def train_dataset(tokenizer):
    return build_dataset(load_conversations("synthetic", synthetic_examples=64, seed=0), tokenizer, 192, packing=False)
