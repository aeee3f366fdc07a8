"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one; and the lock of a folder
that a run writes into (`writing_lock`)."""

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import InputError


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
    try:
        yield partial
    except BaseException:  # a refusal or a failure while filling it: no half-filled scratch stays behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)


LOCK = ".lock"


@contextmanager
def writing_lock(folder: str | os.PathLike, flag: str = "--output") -> Iterator[None]:
    """Hold `folder`/.lock while a run writes into `folder`: a second run into it meanwhile is refused at once, with a
    line naming the first (its process, machine and start), which the holder writes into the lock file. The lock goes
    with the process, however it ends (a killed run's is taken over by the next); the file stays beside the run's
    outputs. A `filelock` lock, as the evaluators' of eval_results.json."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / LOCK
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = path.read_text().strip() or "another run"
        except OSError:  # gone since: its run ended meanwhile
            holder = "another run"
        raise InputError(
            f"{flag} {str(folder)!r} is being written by {holder}: wait for it to end, or give another {flag}."
        ) from None
    try:
        path.write_text(
            f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        yield
    finally:
        try:  # a run refused before writing anything leaves no folder (still holding the lock: no race)
            if os.listdir(folder) == [LOCK]:
                os.unlink(path)
                os.rmdir(folder)
        finally:
            lock.release()
