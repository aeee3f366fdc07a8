"""A training run's outputs as its readers (the assembly, grow, the main job) take them: its record,
training_args.json, and when it says the run is finished.

A run is finished iff its record holds `run.final_step`: the record is rewritten without it when a run starts and
written with it last, after the model, so a run killed at any moment is never taken for a finished one.
"""

import os
from pathlib import Path

from ..core.files import read_json, write_json

TRAINING_ARGS = "training_args.json"


def write_record(folder: str | os.PathLike, record: dict) -> None:
    write_json(Path(folder, TRAINING_ARGS), record)


def read_record(folder: str | os.PathLike) -> dict:
    return read_json(Path(folder, TRAINING_ARGS))


def final_step(run_dir: str | os.PathLike) -> int | None:
    """The step a finished run ended at; None if `run_dir` holds no finished run (see `is_finished`)."""
    return read_record(run_dir).get("run", {}).get("final_step") if Path(run_dir, TRAINING_ARGS).is_file() else None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` holds a finished run: its final record (with `final_step`) is written last, after the model
    and its processor, so a run killed at any moment is never taken for a finished one."""
    return final_step(run_dir) is not None
