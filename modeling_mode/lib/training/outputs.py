"""A training run's outputs as its readers (the assembly, grow, the main job) take them: its record,
training_args.json, when it says the run is finished, and a LoRA expert's adapters (`read_adapters`).

A run is finished iff its record holds `run.final_step`: the record is rewritten without it when a run starts and
written with it last, after the model, so a run killed at any moment is never taken for a finished one.
"""

import os
from pathlib import Path

from safetensors.torch import load_file

from ..core.files import read_json, write_json

TRAINING_ARGS = "training_args.json"
# A LoRA expert's adapters alone, in PEFT's format (adapter_config.json, adapter_model.safetensors), beside the merged
# weights of its final folder: what a MODE needs to store its seed once and each expert's adapters.
ADAPTER = "adapter"
PEFT_PREFIX = "base_model.model."  # PEFT's prefix of the wrapped model's module names


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


def read_adapters(run_dir: str | os.PathLike) -> tuple[dict, dict[str, tuple]] | None:
    """A LoRA run's adapters: its settings {rank, alpha, target_modules (sorted)} and, by the full dotted name of each
    adapted Linear in the model (`text_model.encoder.layers.0.self_attn.q_proj`), its (lora_A [r, in], lora_B
    [out, r]): the Linear's weight is the seed's plus alpha / rank * lora_B @ lora_A. None for a run without
    adapters."""
    folder = Path(run_dir, ADAPTER)
    if not folder.is_dir():
        return None
    config = read_json(folder / "adapter_config.json")
    matrices = {}
    for key, tensor in load_file(folder / "adapter_model.safetensors").items():
        name, matrix, _ = key.removeprefix(PEFT_PREFIX).rsplit(".", 2)  # NAME.lora_A.weight
        matrices.setdefault(name, {})[matrix] = tensor
    settings = {"rank": config["r"], "alpha": config["lora_alpha"], "target_modules": sorted(config["target_modules"])}
    return settings, {name: (pair["lora_A"], pair["lora_B"]) for name, pair in sorted(matrices.items())}
