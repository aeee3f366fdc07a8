"""Runs the job's stages in order, skipping those whose output is finished, with each stage's log and time.

A stage is a command line (one of the library's entry points, `python -m modeling_mode.lib...`, through the sources'
launcher, run by `entry_points.run_entry_point`: its progress and its refusal come back through its status file) or
a function run in the job's own process. Either way its output goes to its log, and a stage that refuses its input
fails the job with the stage's own error line and exit status 2 (`EntryPointError`), as a script's refusal does.
"""

import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from enum import Enum

from tqdm.auto import tqdm

from ..lib.core import cli
from ..lib.core.entry_points import EntryPointError, run_entry_point
from ..lib.core.errors import InputError
from ..lib.core.files import read_json, write_json
from .layout import JobFolder, Output


class Phase(Enum):
    """The parts of the job's wall time in the report, in their order."""

    DATA = "data"
    CLUSTERING = "clustering"
    TRAINING = "training"
    ASSEMBLY = "assembly"
    CURVE = "validation curve"
    EVALUATION = "evaluation"


@dataclass(frozen=True)
class Stage:
    """A named step of the job: `action` makes `output`, and is skipped when the output is finished; its time counts
    in the report's `phase`."""

    name: str
    output: Output
    action: list[str] | Callable[[], None]  # a command line, or a function of no argument run in this process
    phase: Phase


class Runner:
    """Runs stages under `folder`, skipping those already done, and writes each stage's time to `timings.json`."""

    def __init__(self, folder: JobFolder):
        self.folder = folder
        self.timings = read_json(folder.timings) if folder.timings.exists() else {}

    def run_all(self, stages: Iterable[Stage], description: str) -> None:
        """Run `stages` under one progress bar, which shows the running stage's own."""
        with tqdm(list(stages), desc=description) as progress:
            for stage in progress:
                self.run(stage, progress)

    def run(self, stage: Stage, progress: tqdm | None = None) -> None:
        if stage.output.is_finished():
            tqdm.write(f"[{stage.name}] done before, skipped")
            return
        start = time.perf_counter()
        if callable(stage.action):
            self._run_function(stage.name, stage.action)
        else:
            self._run_command(stage.name, [str(part) for part in stage.action], progress)
        self.timings[stage.name] = round(time.perf_counter() - start, 1)
        write_json(self.folder.timings, self.timings)

    def log(self, name: str):
        log = self.folder.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        return log

    def _run_function(self, name: str, action: Callable[[], None]) -> None:
        """Call a stage's function in this process, with what it prints in its log; input it refuses fails the stage
        as a script's refusal does."""
        tqdm.write(f"[{name}]")
        log = self.log(name)
        with open(log, "w") as file, redirect_stdout(file), redirect_stderr(file):
            try:
                action()
            except InputError as error:  # the log ends as a refusing script's output does: with its error line
                print(f"error: {error}", flush=True)
                raise EntryPointError(f"stage {name} failed (log {log}): {error}", cli.BAD_INPUT) from error
            except BaseException:  # anything else: the traceback goes to the log too, then on up to the job
                traceback.print_exc()
                raise

    def _run_command(self, name: str, command: list[str], progress: tqdm | None) -> None:
        """Run a stage's command with its output in its log; the progress it reports goes on `progress`."""
        tqdm.write(f"[{name}] {' '.join(command)}")
        log = self.log(name)

        def show(bar: str) -> None:
            if progress is not None:
                progress.set_postfix_str(f"{name}: {bar}")

        try:
            with open(log, "wb") as output:
                run_entry_point(command, output, on_progress=show)
        except EntryPointError as error:
            # A command that refused its input said why; anything else shows the end of its log.
            lines = log.read_text(errors="replace").splitlines()
            detail = str(error) if error.reported else "the end of its log:\n" + "\n".join(lines[-20:])
            raise EntryPointError(f"stage {name} failed (exit {error.returncode}; log {log}): {detail}",
                                  error.returncode) from error  # fmt: skip
