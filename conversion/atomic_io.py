"""Files and directories that appear complete or not at all: a crash never leaves half of one behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_output_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it to ``target`` only when the block succeeds.

    Beside, not in /tmp, so the final rename stays on one filesystem (atomic, no copy of a 30 GB checkpoint).
    A failure removes the temporary directory and leaves an existing ``target`` untouched. The directory gets
    the mode any new directory gets (the user's umask), not mkdtemp's private 0700.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output directory {target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.converting-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
        target.rename(retired / target.name)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_json_atomically(path: str | Path, payload: dict) -> None:
    """``path`` holds the old content or the whole new one, never a part (see :func:`write_text_atomically`)."""
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n")


def write_text_atomically(path: str | Path, text: str) -> None:
    """``path`` holds the old content or the whole new one, never a part (temporary file, then rename).

    The temporary name carries the process id, so processes sharing a directory (MMR shards) never collide.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
