"""The README's commands write under outputs/ (ignored by git), never into the repository root."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
OUTPUT_FLAGS = ("--output", "--output-dir", "--state-dir", "--importance", "--dry-run", "--manifest")


def readme_commands() -> list[list[str]]:
    """Each command line of the README's bash blocks as words, optional `[...]` brackets removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0] for block in blocks for line in block.splitlines()]
    return [[word.strip("[]") for word in shlex.split(line)] for line in lines
            if line.strip().startswith(("python", "accelerate", "apriel-h1"))]


def test_every_path_a_readme_command_writes_or_reads_is_under_outputs():
    paths = [(words[:4], words[index + 1]) for words in readme_commands()
             for index, word in enumerate(words[:-1]) if word in OUTPUT_FLAGS]
    assert len(paths) >= 8, paths  # the pipeline's commands are all found
    outside = [(command, path) for command, path in paths if not path.startswith("outputs/")]
    assert not outside, outside
