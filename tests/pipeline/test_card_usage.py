"""The usage snippet of a generated model card runs as written, both where this package is importable and where it
is not, without stopping at transformers' "Do you wish to run the custom code? [y/N]" (stdin is closed, so the
prompt would be answered by end-of-file: the test looks for its text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_cards.card import render_model_card
from modeling_apriel_h1 import AprielH1ForCausalLM
from recipes.tiny_teacher import build_tokenizer
from tests.modeling.tiny import tiny_config

REPO = Path(__file__).resolve().parents[2]
# Every top-level package of this project: hidden from the process that plays a machine without it installed
# (an editable install would otherwise find them from any directory).
OUR_PACKAGES = ("modeling_apriel_h1", "conversion", "recipes", "model_cards", "benchmarks")


@pytest.fixture(scope="module")
def saved_hybrid(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("card_usage") / "tiny-h1"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = tiny_config(["attention", "mamba", "mamba", "attention"], vocab_size=len(tokenizer),
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    AprielH1ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def usage_snippet(card: str) -> str:
    usage = card.split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


@pytest.mark.parametrize("package", ["importable", "not importable"])
def test_the_cards_usage_snippet_runs_as_written(saved_hybrid, tmp_path, package):
    snippet = usage_snippet(render_model_card(saved_hybrid, repo_id=str(saved_hybrid)))
    if package == "importable":
        preamble, path = "", str(REPO)
    else:
        preamble = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in OUR_PACKAGES)
        path = ""
    script = tmp_path / "usage.py"
    script.write_text(preamble + snippet.replace("max_new_tokens=256", "max_new_tokens=8"))
    environment = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "mods")}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert result.stdout.strip(), "the snippet printed no generation"
