"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one."""

import json
import os
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json(path: str | os.PathLike, content) -> None:
    write_text(path, json.dumps(content, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())
