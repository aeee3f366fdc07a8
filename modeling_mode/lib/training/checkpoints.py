"""A run's checkpoints (saved, listed, pruned) and its final save.

A run directory holds the final CLIPModel with its CLIPProcessor, training_args.json (the record, `outputs`),
checkpoints/step_N and logs/. The final save writes the record with `run.final_step` last, after the model: that is
when the run is finished (`outputs.is_finished`).
"""

import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ..core.files import atomic_directory, read_json, write_json
from .outputs import write_record

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


def is_checkpoint(path: str | os.PathLike) -> bool:
    return Path(path, TRAINER_STATE).is_file()


def checkpoint_state(checkpoint: str | os.PathLike) -> dict:
    """A checkpoint's trainer_state.json: its step, the schedule's length, where each process's stream stood."""
    return read_json(Path(checkpoint, TRAINER_STATE))


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of a run's complete checkpoints, oldest first; interrupted saves (scratch folders) are not."""
    root = os.path.join(run_dir, CHECKPOINTS)
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        match = re.fullmatch(r"step_(\d+)", name)
        if match and is_checkpoint(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int | None) -> None:
    if keep is not None:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(path)


def save_checkpoint(accelerator: Accelerator, run_dir: str, state: dict, config, processor, record: dict) -> str:
    """checkpoints/step_N: Accelerate's state (weights, optimizer, one RNG state per process), made self-describing
    (config, CLIPProcessor, record, trainer state). Every process saves into the main process's scratch folder, which
    only the main process renames, once all files are in (`files.atomic_directory`): a run killed while saving leaves
    no checkpoint that looks complete. Returns on every process once the checkpoint is complete."""
    path = Path(run_dir, CHECKPOINTS, f"step_{state['step']}")
    with atomic_directory(path) if accelerator.is_main_process else nullcontext() as scratch:
        (scratch,) = broadcast_object_list([scratch])
        accelerator.save_state(scratch)
        if accelerator.is_main_process:
            config.save_pretrained(scratch)
            processor.save_pretrained(scratch)
            write_record(scratch, record)
            write_json(scratch / TRAINER_STATE, state)
        accelerator.wait_for_everyone()  # every process's files are in before the main process renames the folder
    accelerator.wait_for_everyone()
    return str(path)


def save_final(run_dir: str, record: dict, model, processor) -> None:
    """`save_pretrained` the model and its CLIPProcessor into a scratch folder and move each file into `run_dir`
    whole; then write the record with `final_step`, LAST. Until it is in, the record the run wrote when it started
    (without `final_step`) says that the directory holds no finished run, whatever files are already there.

    Not `files.atomic_directory`: the run directory keeps its checkpoints and logs, so it is not replaced whole."""
    scratch = Path(run_dir, ".final.partial")
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run killed while saving
    model.save_pretrained(scratch)
    processor.save_pretrained(scratch)
    for file in scratch.iterdir():
        os.replace(file, Path(run_dir, file.name))
    scratch.rmdir()
    write_record(run_dir, record)
