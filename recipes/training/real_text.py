"""Real English text that ships with Python itself: a training share that distillation and SFT may mix into their
data (``text_data: python_docs``), and a held-out share that perplexity is measured on. Nothing is downloaded, so it
is there wherever a Python is installed; which Python's text it was is recorded with its sha256.

* held out: the last tenth of the topics of CPython's ``Lib/pydoc_data/topics.py`` (the ``help()`` pages of the
  language reference, in the file's order), never trained on;
* training: the other nine tenths of the topics, and the docstrings of the pure-Python standard library (tests,
  IDLE and demos left out) of at least ``MIN_DOCSTRING_CHARS`` characters. Some topics repeat others (``compound``
  holds the ``while`` and ``with`` statements, which are held-out topics), so a paragraph that shares a run of
  ``OVERLAP_WORDS`` words with the held-out text is dropped, and so is a document that still shares one once its
  paragraphs are joined: perplexity is measured on text the student never saw. Both are Python documentation,
  like the held-out text: the perplexity measures how much of the teacher's language in this domain a student
  keeps, not its English at large.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_FRACTION = 0.1  # of pydoc's topics, the last ones in the file's order
MIN_DOCSTRING_CHARS = 200  # shorter docstrings are mostly signatures and one-liners
OVERLAP_WORDS = 12  # a shared run of this many words with the held-out text drops a training paragraph
SKIPPED_LIBRARY_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "turtledemo", "lib2to3"}


@dataclass(frozen=True)
class RealText:
    text: str
    description: str  # which text and which part of it, as the results record it
    sha256: str


def _topics() -> tuple[list[str], dict[str, str]]:
    from pydoc_data.topics import topics  # noqa: PLC0415  (stdlib; read only when asked for)

    return list(topics), topics


def _held_out_names(names: list[str]) -> list[str]:
    return names[len(names) - max(1, round(len(names) * HELD_OUT_FRACTION)) :]


def held_out_real_text() -> RealText:
    """The held-out real English text: the last tenth of pydoc's topics, joined by blank lines."""
    names, topics = _topics()
    held_out = _held_out_names(names)
    text = "\n\n".join(topics[name].strip() for name in held_out)
    description = (f"CPython {platform.python_version()} Lib/pydoc_data/topics.py, the last {len(held_out)} of its "
                   f"{len(names)} topics ({held_out[0]!r} to {held_out[-1]!r}), {len(text):,} characters")
    return RealText(text, description, sha256_of_text(text))


@functools.cache  # read once a process: a schedule mixes it into every stage, and reading it takes seconds
def training_documents(library: Path | None = None) -> tuple[tuple[str, ...], str]:
    """The training share: pydoc's other topics and the standard library's docstrings (see the module docstring),
    in a fixed order, and a description of them. ``library``: the stdlib folder (default: the running Python's)."""
    names, topics = _topics()
    held_out = set(_held_out_names(names))
    seen = _word_runs(held_out_real_text().text)
    library = library or Path(sysconfig.get_paths()["stdlib"])
    docstrings = [docstring for path in sorted(library.rglob("*.py"))
                  if not SKIPPED_LIBRARY_PARTS.intersection(path.relative_to(library).parts)
                  for docstring in _docstrings(path)]
    documents, dropped = [], 0
    for document in [topics[name].strip() for name in names if name not in held_out] + docstrings:
        kept = _without_overlap(document, seen)
        dropped += kept != document
        if kept:
            documents.append(kept)
    description = (f"CPython {platform.python_version()}: the first {len(names) - len(held_out)} topics of "
                   f"Lib/pydoc_data/topics.py and {len(docstrings):,} standard-library docstrings of at least "
                   f"{MIN_DOCSTRING_CHARS} characters ({dropped} of them cut or dropped for sharing {OVERLAP_WORDS} "
                   f"words in a row with the held-out topics), {sum(map(len, documents)):,} characters")
    return tuple(documents), description


def _without_overlap(document: str, seen: set[int]) -> str:
    """``document`` without its paragraphs that share a word run with ``seen``; empty if it still shares one."""
    kept = "\n\n".join(paragraph for paragraph in document.split("\n\n") if not _word_runs(paragraph) & seen)
    return "" if _word_runs(kept) & seen else kept


def text_pieces(documents: Sequence[str], max_chars: int) -> list[str]:
    """The documents cut at paragraph boundaries (blank lines) into pieces of at most about ``max_chars``
    characters (a longer paragraph is cut at ``max_chars``), so that a piece fits a training row."""
    pieces = []
    for document in documents:
        current = ""
        for paragraph in document.split("\n\n"):
            while len(paragraph) > max_chars:
                pieces.extend(filter(None, [current, paragraph[:max_chars]]))
                current, paragraph = "", paragraph[max_chars:]
            if current and len(current) + 2 + len(paragraph) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current.strip():
            pieces.append(current)
    return pieces


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):  # a few stdlib files are templates or other encodings
        return []
    nodes = (node for node in ast.walk(tree)
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return [text for node in nodes if (text := ast.get_docstring(node)) and len(text) >= MIN_DOCSTRING_CHARS]


def _word_runs(text: str) -> set[int]:
    words = text.lower().split()
    return {hash(tuple(words[start : start + OVERLAP_WORDS])) for start in range(len(words) - OVERLAP_WORDS + 1)}


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
