"""Imports point down: modeling_apriel_h1 <- conversion <- recipes, and model_cards may import conversion; cli, the
command-line checks every command shares, imports none of them.

A module that imports upward makes the lower package unusable without the higher one (the remote code that
ships beside saved weights must not pull training packages; conversion must run without the recipes). This
reads every module's import statements (no import is executed) so a new upward import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING_PACKAGES = {"trl", "datasets", "peft", "accelerate"}
FORBIDDEN = {
    "cli": {"modeling_apriel_h1", "conversion", "recipes", "model_cards"} | TRAINING_PACKAGES,
    "modeling_apriel_h1": {"conversion", "recipes", "model_cards"} | TRAINING_PACKAGES,
    "conversion": {"recipes", "model_cards"},
    "model_cards": {"recipes"},
}


def imported_top_level_packages(path: Path) -> set[str]:
    """The top-level package of every absolute import in ``path`` (relative imports stay in the package)."""
    packages = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_upward(package):
    upward = {
        str(path.relative_to(ROOT)): sorted(imported_top_level_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert not {name: found for name, found in upward.items() if found}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "upward.py"
    module.write_text("import torch\nfrom recipes.training.kd_loss import token_divergence\nfrom . import sibling\n")
    assert imported_top_level_packages(module) == {"torch", "recipes"}
