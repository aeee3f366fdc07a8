"""The parent's side of the one protocol between a process and the library's entry points it launches: the main
job's stages and grow's steps run `python -m modeling_mode.lib.X FLAGS` (through a launcher such as `accelerate
launch`) with `run_entry_point`, one error type for their failures, `EntryPointError`.

The parent names a JSON-lines status file in the child's environment (`status.STATUS_FILE`); the child writes its
events there (`status`: its progress bars' state, and its refusal of bad input, as `cli.run` ends it). The parent
reads those events, never the child's output, which goes on as it is (to the parent's terminal, or a log): a child's
progress and its reason to fail reach the parent whatever the child prints, and whatever a launcher in between prints.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from . import cli
from .status import STATUS_FILE

POLL_SECONDS = 0.2


class EntryPointError(RuntimeError):
    """A launched entry point (or a stage of the job run in its stead) failed. `returncode` is its exit status
    (`cli.BAD_INPUT`: it refused its input); `reported`: the message is the error it reported, not only its status."""

    def __init__(self, message: str, returncode: int, reported: bool = True):
        super().__init__(message)
        self.returncode, self.reported = returncode, reported


def entry_point_command(module: str, arguments, launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
    """The command that runs the library's entry point `module` (`python -m MODULE`) with `arguments`, its argument
    dataclass filled in by the caller: a field the caller gets wrong fails when the command is built, and the entry
    point parses back the same values. `launcher` is `python` or, e.g., `accelerate launch ...`: both take `-m`."""
    return [*launcher, "-m", module, *cli.command_line(arguments)]


def run_entry_point(
    command: list[str], output: BinaryIO | None = None, on_progress: Callable[[str], None] | None = None
) -> None:
    """Run `command` (`entry_point_command`'s), its output to `output` (a file opened for writing bytes; None: this
    process's own), `on_progress` called with each progress state it reports. Its failure raises `EntryPointError`
    with its own error where it reported one, else its exit status."""
    with tempfile.TemporaryDirectory(prefix="mode-status-") as scratch:
        status = Path(scratch) / "status.jsonl"
        status.touch()
        environment = {**os.environ, STATUS_FILE: str(status)}
        stream = {} if output is None else {"stdout": output, "stderr": subprocess.STDOUT}
        with status.open() as events, subprocess.Popen(command, env=environment, **stream) as child:
            error, pending = None, ""
            while True:
                finished = child.poll() is not None
                *lines, pending = (pending + events.read()).split(
                    "\n"
                )  # whole lines only: an event being written waits
                for event in map(json.loads, lines):
                    if "progress" in event and on_progress is not None:
                        on_progress(event["progress"])
                    error = event.get("error", error)
                if finished:
                    break
                time.sleep(POLL_SECONDS)
    if child.returncode != 0:
        where = "its output is above" if output is None else f"its output is in {getattr(output, 'name', 'its log')}"
        said = error or f"{' '.join(command[:4])} ... failed with exit status {child.returncode} ({where})."
        raise EntryPointError(said, child.returncode, reported=error is not None)
