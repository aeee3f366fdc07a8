"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one."""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    yield partial
    os.replace(partial, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def write_json(path: str | os.PathLike, content) -> None:
    write_text(path, json.dumps(content, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch directory beside `path` to fill; it replaces `path` as a whole when the block ends without error.

    Whoever reads `path` (or a crash at any moment) finds the old directory complete, the new one complete, or for an
    instant between two renames none: never a half-written one. A scratch left by a crash is cleared on the next try.
    """
    path = Path(path)
    partial, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)
