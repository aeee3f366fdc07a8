"""A run's record, training_args.json, as a run starts: its flags and the facts they do not say (how it started, its
data, its processes, the library versions); and the flat form of it that trackers take as hyper-parameters.

How a run's folder says it is finished (`is_finished`), and the record's file, are the run's outputs (`outputs`).
"""

import dataclasses

import accelerate
import datasets
import torch
import transformers
from accelerate import Accelerator

from .arguments import ExpertTrainingArguments
from .batches import TrainingData
from .lora import settings as lora_settings
from .outputs import read_record
from .start import Start


def run_record(
    args: ExpertTrainingArguments, start: Start, accelerator: Accelerator, data: TrainingData, step_setup: dict
) -> dict:
    """The record of a run that is starting (without `final_step`, written at the final save). `step_setup`: how its
    steps run (`loop.step_setup`)."""
    origin = {
        "start": start.kind,
        "start_source": start.source,
        "start_checkpoint": start.checkpoint,
        "start_step": start.step,
        "base_model": start.base_model(),
    }
    if start.kind == "resume":  # keep how the run first started; list the checkpoints it resumed from
        first = read_record(start.checkpoint)["run"]
        origin = {key: first[key] for key in origin}
        origin["resumed_from"] = first.get("resumed_from", []) + [start.checkpoint]
    if data.cluster is None:
        variant = "seed: all pairs"
    elif args.out_of_cluster_ratio == 0:
        variant = "paper: the cluster's pairs only"
    else:
        variant = f"released code: the cluster's pairs plus {args.out_of_cluster_ratio:g} of the others'"
    return {
        "args": dataclasses.asdict(args),
        "run": {
            "family": start.family,  # the experts' model_type: clip, metaclip_2, siglip or siglip2
            "cluster": data.cluster,
            "data_variant": variant,
            **origin,
            "num_processes": accelerator.num_processes,
            "global_batch_size": data.global_batch_size,
            "mixed_precision": accelerator.mixed_precision,
            "lora": lora_settings(args),  # None: every weight trained
            "step_setup": step_setup,
            "data": data.summary(),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "accelerate": accelerate.__version__,
                "datasets": datasets.__version__,
            },
        },
    }


def scalars(record: dict) -> dict:
    """A flat dict of numbers and strings, as trackers' hyper-parameter tables take."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        else:
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
