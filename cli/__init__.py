"""How every command line of this project answers bad input: one line on stderr, exit status 2, no traceback.

argparse answers a malformed command line that way (``prog: error: ...``, status 2). ``command_line`` gives
the same answer to what a command finds wrong once it runs: a path that does not exist, a file that does not
parse, a config key it does not know, layers that do not fit the model. Those reach it as ``ValueError`` (the
input checks of this project raise it, and so do json's parser and ``UsageError`` below), ``OSError`` (files,
disks, the Hub) or the YAML and safetensors parsers' own errors. Any other exception is a bug and keeps its
traceback; ``APRIEL_H1_TRACEBACK=1`` shows the traceback of an input error as well, for whoever debugs a check.

The checks below run before a path reaches transformers, so that a message names the file and the fix: a
local directory that does not exist is reported as such rather than handed to the Hub client (whose answer
is "Repo id must be in the form ..."), a model directory without a tokenizer says so, and a truncated
safetensors file is named. This package sits below all the others and imports none of them, so that every
command (conversion, recipes, model cards, benchmarks) shares it while imports keep pointing down; the model
package does not need it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError

from cli.yaml_values import load_yaml

TRACEBACK_VARIABLE = "APRIEL_H1_TRACEBACK"
USAGE_EXIT_STATUS = 2  # what argparse exits with on a bad command line
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as shells report an interrupted command
INPUT_ERRORS = (ValueError, OSError, yaml.YAMLError, SafetensorError)

# A Hub repository id as huggingface_hub accepts it: "name" or "namespace/name".
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[\w.-]+$")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
GGUF_MAGIC = b"GGUF"  # the first bytes of a GGUF file (llama.cpp's format)

_inside_command: ContextVar[bool] = ContextVar("inside_command", default=False)
Main = Callable[..., int | None]


class UsageError(ValueError):
    """Something the user gave is wrong; the message says what, and what to do instead."""


def command_line(main: Main) -> Main:
    """Decorate a command's ``main(argv)``: an input error prints ``error: <one line>`` and returns 2.

    A command run in-process by another (the schedule runs the importance command) lets the error through to
    the outer command, which reports it once.
    """

    @functools.wraps(main)
    def run(*args, **kwargs):
        if _inside_command.get():
            return main(*args, **kwargs)
        token = _inside_command.set(True)
        try:
            return main(*args, **kwargs)
        except INPUT_ERRORS as error:
            if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
                raise
            print(f"error: {describe(error)}", file=sys.stderr)
            return USAGE_EXIT_STATUS
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT_STATUS
        finally:
            _inside_command.reset(token)

    return run


def describe(error: BaseException) -> str:
    """One line for an input error: the message if it was written for the user, else what the error means."""
    filename = getattr(error, "filename", None)
    if isinstance(error, FileNotFoundError) and filename:
        return f"{filename} does not exist; check the path"
    if isinstance(error, PermissionError) and filename:
        return f"no permission to use {filename}; check its permissions or choose another path"
    if isinstance(error, IsADirectoryError) and filename:
        return f"{filename} is a directory where a file is expected; give a file"
    if isinstance(error, NotADirectoryError) and filename:
        return f"{filename}: part of this path is a file where a directory is expected"
    if isinstance(error, json.JSONDecodeError):
        return f"a file is not valid JSON ({error}); fix or re-create it"
    if isinstance(error, yaml.YAMLError):
        return f"a file is not valid YAML ({_one_line(str(error))}); fix its syntax"
    if isinstance(error, SafetensorError):
        return f"a safetensors file cannot be read ({error}); it may be truncated: re-create or re-download it"
    return _one_line(str(error)) or type(error).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ checks


def existing_path(text: str | Path, what: str, how_to_make: str | None = None) -> Path:
    """``text`` as a path that exists, or a UsageError naming ``what`` is missing (and how to make it)."""
    path = Path(text).expanduser()
    if not path.exists():
        hint = f"; create it with: {how_to_make}" if how_to_make else ""
        raise UsageError(f"the {what} {text} does not exist{hint}")
    return path


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in ``path``; a UsageError naming ``what`` if it is missing or not JSON."""
    path = existing_path(path, what)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"the {what} {path} is not valid JSON ({error}); fix or re-create it") from None


def read_json_if_present(path: str | Path, what: str | None = None) -> Any:
    """The JSON value in ``path``, or None where there is no such file (a run that has not written it yet); a
    UsageError naming ``what`` (the file's name by default) if it is there but not JSON."""
    path = Path(path)
    return read_json(path, what or path.name) if path.is_file() else None


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty for an empty file; numbers read as users spell them, see
    ``cli.yaml_values``); a UsageError naming ``what`` if the file is missing, is not YAML, or holds
    something other than ``key: value`` lines."""
    path = existing_path(path, what)
    try:
        values = load_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UsageError(f"the {what} {path} is not valid YAML ({_one_line(str(error))}); fix its syntax") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"the {what} {path} holds a {type(values).__name__}, not key: value lines")
    return values


def looks_like_hub_id(text: str) -> bool:
    """Whether ``text`` names a Hub repository rather than a local path: it has the form of a repo id and does
    not start inside an existing local directory (``runs/student`` with ``runs/`` present is a local path)."""
    if not _HUB_ID.match(text) or ".." in text or "--" in text:
        return False
    return "/" not in text or not Path(text.split("/")[0]).exists()


def model_source(
    text: str | Path,
    what: str = "model",
    how_to_make: str | None = None,
    tokenizer: bool = False,
    hub: bool = False,
) -> str:
    """A model argument, checked before transformers reads it: an existing ``save_pretrained`` directory with a
    readable config.json, complete safetensors weights and, with ``tokenizer``, a tokenizer; or, with ``hub``,
    a name of the form of a Hub repo id that is not a local path (the Hub client checks it then)."""
    text = str(text)
    path = Path(text).expanduser()
    if not path.exists():
        if hub and looks_like_hub_id(text):
            return text
        existing_path(path, what, how_to_make)
    gguf_files = [path] if path.is_file() and _is_gguf(path) else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if gguf_files and not (path / "config.json").is_file():
        found = "is a GGUF file" if path.is_file() else f"holds a GGUF file ({gguf_files[0].name}) but no config.json"
        raise UsageError(
            f"the {what} {text} {found}, not a save_pretrained directory; import it first with: "
            f"python -m conversion.gguf {gguf_files[0]} --output DIR, then give DIR"
        )
    if not path.is_dir():
        raise UsageError(f"the {what} {text} is a file; give a save_pretrained directory")
    if not (path / "config.json").is_file():
        raise UsageError(
            f"the {what} directory {text} has no config.json; give a save_pretrained directory"
            + (f" (create one with: {how_to_make})" if how_to_make else "")
        )
    if not isinstance(read_json(path / "config.json", f"{what}'s config"), dict):
        raise UsageError(f"the {what}'s config {path / 'config.json'} is not a JSON object; re-create it")
    weights = [file for pattern in _WEIGHT_PATTERNS for file in sorted(path.glob(pattern))]
    if not weights:
        raise UsageError(f"the {what} directory {text} has no weights (*.safetensors); save the model there again")
    for file in weights:
        if file.suffix == ".safetensors":
            check_safetensors_file(file)
    if tokenizer and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UsageError(
            f"the {what} directory {text} has no tokenizer (no {' or '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer there with tokenizer.save_pretrained(DIR)"
        )
    return text


def _is_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file (llama.cpp's format), which ``python -m conversion.gguf`` imports."""
    if path.suffix == ".gguf":
        return True
    with path.open("rb") as handle:
        return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def check_safetensors_file(path: Path) -> None:
    """A UsageError unless ``path`` holds a whole safetensors file: its header parses and the tensor bytes it
    lists are all there (a copy or download that stopped early fails here, naming the file)."""
    size = path.stat().st_size
    problem = None
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if header_length is None or 8 + header_length > size:
            problem = "its header is cut short"
        else:
            try:
                header = json.loads(handle.read(header_length))
                tensors = [entry for key, entry in header.items() if key != "__metadata__"]
                end = max((entry["data_offsets"][1] for entry in tensors), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                problem = "its header is not a safetensors header"
            else:
                if 8 + header_length + end > size:
                    problem = f"it is {size} bytes but its header lists {8 + header_length + end}"
    if problem:
        raise UsageError(f"{path} is not a complete safetensors file ({problem}); re-create or re-download it")
