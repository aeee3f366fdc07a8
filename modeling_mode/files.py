"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one."""

import json
import os
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
