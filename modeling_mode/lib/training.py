"""Training MODE's CLIP data experts with Accelerate (Ma et al., CVPR 2024, section 2).

A seed CLIP trains on every pair (`--cluster all`). Each expert forks from a seed checkpoint, taking its weights,
optimizer state and schedule position, and continues on one coarse cluster's pairs: independent jobs that may run
anywhere, on any number of processes. `modeling_mode.lib.assembly` then joins them into one `ModeCLIPModel`.

Import this module explicitly (`import modeling_mode.lib.training`): it needs accelerate and datasets, which the
Hub remote-code model does not.
"""

import dataclasses
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import accelerate
import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import (
    PrecisionType,
    ProjectConfiguration,
    gather_object,
    is_tensorboard_available,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
)

from .data import (
    NO_CLUSTER,
    GlobalBatchSampler,
    PairCollator,
    PairDataset,
    PairTransform,
    StreamingPairs,
    caption_mask,
    check_column_types,
    check_columns,
    cluster_ids,
    load_pairs,
)
from .errors import InputError, check_output_dir, naming_failures
from .files import read_json, write_json
from .loss import contrastive_loss
from .processors import char_level_clip_config, char_level_tokenizer, pil_image_processor

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.json"
MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned temperature so that logits are scaled by at most 100


@dataclass
class ExpertTrainingArguments:
    """Flags of `train/expert.py`. Defaults are OpenAI CLIP's hyper-parameters and the paper's data recipe."""

    dataset: str = field(
        metadata={
            "help": "Pairs: a save_to_disk directory (e.g. the clustering's DIR/dataset), a Hub id or a folder "
            "of data files (parquet, webdataset .tar shards, ...)."
        }
    )
    output: str = field(
        metadata={"help": "Run directory: the final CLIPModel, training_args.json, checkpoints, logs."}
    )
    max_steps: int = field(
        metadata={"help": "Optimizer steps of the whole schedule, counted from the seed's step 0 for a fork."}
    )
    cluster: str = field(default="all", metadata={"help": "Coarse cluster id this expert trains on, or 'all' (seed)."})
    init: str | None = field(
        default=None,
        metadata={
            "help": "Start from: a checkpoint of this script (checkpoints/step_N, or a run directory: its last "
            "checkpoint) -> weights, optimizer state and schedule position; a CLIPModel directory or Hub id -> "
            "weights only."
        },
    )
    config: str | None = field(
        default=None, metadata={"help": "Start from random weights: 'tiny', 'small' or a CLIPConfig json file."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last checkpoint in --output, if there is one."}
    )
    out_of_cluster_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Share of the other clusters' pairs added to an expert's data, redrawn each epoch (a fixed "
            "sample when streaming): 0 is the paper, 0.02 the authors' released code."
        },
    )
    split: str = field(default="train", metadata={"help": "Split of a DatasetDict or Hub dataset."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset, filtering the cluster on the fly."})
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Shuffle buffer of a streamed dataset."})
    image_column: str = field(default="image", metadata={"help": "Column of the images."})
    caption_column: str = field(
        default="caption", metadata={"help": "Column of the captions: a string, or a list of which one is drawn."}
    )
    cluster_column: str = field(default="coarse_id", metadata={"help": "Column of the pairs' coarse cluster ids."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per process and micro-batch."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches per optimizer step. The loss contrasts the whole accumulated global batch "
            "(features of the other micro-batches are cached), so it equals a larger batch's loss."
        },
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (CLIP ViT-B: 5e-4)."})
    warmup_steps: int = field(default=2000, metadata={"help": "Linear warm-up steps before the cosine decay."})
    weight_decay: float = field(
        default=0.2, metadata={"help": "AdamW weight decay, not on gains, biases, temperature."}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Clip the gradient norm to this; 0 does not clip."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16 or bf16; by default that of `accelerate config` / launch."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the backward."})
    checkpoint_every: int = field(default=1000, metadata={"help": "Save an Accelerate checkpoint every N steps."})
    keep_checkpoints: int | None = field(
        default=None, metadata={"help": "Keep only the N newest checkpoints (default: all, to fork from any)."}
    )
    stop_at_step: int | None = field(
        default=None,
        metadata={
            "help": "Stop (with a checkpoint) at this step, part-way through the --max-steps schedule: e.g. a "
            "seed to fork experts from, as the paper does at epoch 27 of 32."
        },
    )
    log_every: int = field(default=10, metadata={"help": "Log the loss and throughput every N steps."})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate trackers, comma-separated, or none."})
    num_workers: int = field(default=4, metadata={"help": "Data loader worker processes per training process."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation, data order and augmentation."})


# ---------------------------------------------------------------------------------------------------- models


def random_clip_config(name: str) -> CLIPConfig:
    """'tiny' (tests, seconds on a CPU), 'small' (real runs on a CPU) or a CLIPConfig json file."""
    sizes = {  # width, layers, heads, image size, patch size, context, MLP ratio
        "tiny": (32, 2, 4, 32, 8, 32, 2),
        "small": (256, 4, 4, 64, 8, 77, 4),
    }
    if name in sizes:
        return CLIPConfig(**char_level_clip_config(*sizes[name]))
    if not os.path.isfile(name):
        raise InputError(f"Unknown --config {name!r}: use 'tiny', 'small' or the path of a CLIPConfig json file.")
    return CLIPConfig.from_json_file(name)


def random_clip(name: str) -> tuple[CLIPModel, object, object]:
    """Random weights, with a character-level tokenizer and a PIL image processor made without downloads."""
    config = random_clip_config(name)
    tokenizer = char_level_tokenizer(config.text_config.max_position_embeddings)
    if config.text_config.vocab_size < len(tokenizer):
        raise InputError(
            f"--config {name!r} has a vocabulary of {config.text_config.vocab_size}, fewer than the {len(tokenizer)} "
            "tokens of the character tokenizer made for random starts."
        )
    return CLIPModel(config), tokenizer, pil_image_processor(config.vision_config.image_size)


def load_clip(path: str) -> tuple[CLIPModel, object, object]:
    """A CLIPModel (in float32, the master weights' precision), its tokenizer and image processor."""
    model = CLIPModel.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)


def final_step(run_dir: str) -> int | None:
    """The step a finished run ended at; None if `run_dir` holds no finished run (see `is_finished`)."""
    path = os.path.join(run_dir, TRAINING_ARGS)
    return read_json(path).get("run", {}).get("final_step") if os.path.isfile(path) else None


def is_finished(run_dir: str) -> bool:
    """Whether `run_dir` holds a finished run: its final training_args.json (with `final_step`) is written last, after
    the model, tokenizer and image processor, so a run killed at any moment is never taken for a finished one."""
    return final_step(run_dir) is not None


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, TRAINER_STATE))


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of a run's complete checkpoints, oldest first; interrupted saves (`*.partial`) are not listed."""
    root = os.path.join(run_dir, CHECKPOINTS)
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        match = re.fullmatch(r"step_(\d+)", name)
        if match and is_checkpoint(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


@dataclass
class Start:
    """Where a run starts: `kind` is 'config', 'weights', 'fork' (a seed checkpoint) or 'resume'."""

    kind: str
    source: str
    checkpoint: str | None = None  # Accelerate state to load: optimizer, schedule position (and RNG on resume)
    step: int = 0  # the checkpoint's step, where the schedule goes on from

    @classmethod
    def from_checkpoint(cls, kind: str, source: str, checkpoint: str) -> "Start":
        return cls(kind, source, checkpoint, read_json(os.path.join(checkpoint, TRAINER_STATE))["step"])


def resolve_start(args: ExpertTrainingArguments, stop: int) -> Start:
    """Where the run starts, read from the flags and files alone: checked before anything is loaded."""
    checkpoint = latest_checkpoint(args.output)
    if checkpoint and not args.resume:
        raise InputError(
            f"--output {args.output!r} holds checkpoints of an earlier run: pass --resume to continue it, or give "
            "another --output."
        )
    if checkpoint:
        start = Start.from_checkpoint("resume", checkpoint, checkpoint)
        if start.step > stop:
            raise InputError(
                f"--output {args.output!r} was checkpointed at step {start.step}, past this run's last step {stop} "
                "(--stop-at-step, --max-steps)."
            )
        return start
    start = resolve_init(args)
    if start.kind == "fork" and start.step >= args.max_steps:
        raise InputError(
            f"--init {args.init!r} is at step {start.step}, not before --max-steps {args.max_steps}: fork from an "
            f"earlier checkpoint ({CHECKPOINTS}/step_N) or extend the schedule with a larger --max-steps."
        )
    return start


def resolve_init(args: ExpertTrainingArguments) -> Start:
    """A new run's start: random weights (--config), a CLIP's weights, or a fork of a seed checkpoint (--init)."""
    if args.init and args.config:
        raise InputError("Pass either --init (pretrained or seed weights) or --config (random weights), not both.")
    if args.config:
        return Start("config", args.config)
    if not args.init:
        raise InputError("Say where training starts: --init (a seed checkpoint, a CLIP) or --config tiny|small|FILE.")
    if os.path.isdir(args.init):
        checkpoint = args.init if is_checkpoint(args.init) else latest_checkpoint(args.init)
        if checkpoint:
            return Start.from_checkpoint("fork", args.init, checkpoint)
        if os.path.isfile(os.path.join(args.init, "config.json")):
            return Start("weights", args.init)
        raise InputError(
            f"Unknown --init {args.init!r}: the directory is neither a checkpoint of train/expert.py "
            f"({TRAINER_STATE}), a run with {CHECKPOINTS}/step_N, nor a CLIPModel directory (config.json)."
        )
    if os.path.isfile(args.init):
        raise InputError(f"--init {args.init!r} is a file: give a CLIPModel directory or Hub id, or a checkpoint.")
    return Start("weights", args.init)  # a Hub id; a path that does not exist is refused when it is loaded


def load_start(start: Start):
    """The model, tokenizer and image processor a run starts from."""
    if start.kind == "config":
        return random_clip(start.source)
    with naming_failures(start_flag(start), start.checkpoint or start.source):
        return load_clip(start.checkpoint or start.source)


def start_flag(start: Start) -> str:
    """How an error names the files a run starts from."""
    return "the checkpoint to resume (--resume)" if start.kind == "resume" else "--init"


# ---------------------------------------------------------------------------------------------------- optimization


def no_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Gains, biases, the temperature and the class embedding: open_clip's rule of 1-d parameters."""
    return parameter.ndim < 2 or "logit_scale" in name


def build_optimizer(model: torch.nn.Module, args: ExpertTrainingArguments) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not no_decay(n, p)], "decay": True},
        {"params": [p for n, p in named if no_decay(n, p)], "decay": False},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    set_hyperparameters(optimizer, args)
    return optimizer


def set_hyperparameters(optimizer: torch.optim.Optimizer, args: ExpertTrainingArguments) -> None:
    """This run's betas, eps and weight decay: loading a seed's optimizer state would bring back the seed's."""
    for group in optimizer.param_groups:
        group.update(
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay if group["decay"] else 0.0,
        )


def learning_rate_at(step: int, args: ExpertTrainingArguments) -> float:
    """Linear warm-up to the peak, then cosine decay to zero at `max_steps`."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return args.learning_rate * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def embed(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features. The wrapped model's forward is called, so that DDP sees the pass."""
    outputs = model(**batch)
    return outputs.image_embeds, outputs.text_embeds


def accumulate_gradients(model, micro_batches: list[dict], accelerator: Accelerator) -> torch.Tensor:
    """Backward of the contrastive loss of the global batch made of every process's `micro_batches`; returns it.

    With several micro-batches, their features are first computed without gradients; each micro-batch is then
    recomputed with gradients and contrasted against all the cached ones, so that the accumulated gradient is that
    of the whole batch (as open_clip's --accum-freq), at the cost of one extra forward.
    """
    logit_scale = accelerator.unwrap_model(model).logit_scale
    cached = None
    if len(micro_batches) > 1:
        with torch.no_grad():
            cached = [embed(model, batch) for batch in micro_batches]
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # Gradients are all-reduced once, in the last backward.
        with nullcontext() if last else accelerator.no_sync(model):
            image_embeds, text_embeds = embed(model, batch)
            if cached is not None:
                image_embeds = torch.cat([image_embeds if j == i else c[0] for j, c in enumerate(cached)])
                text_embeds = torch.cat([text_embeds if j == i else c[1] for j, c in enumerate(cached)])
            # The temperature is in every micro-batch's loss: let its gradient through once, not once per pass.
            loss = contrastive_loss(image_embeds, text_embeds, logit_scale if last else logit_scale.detach())
            accelerator.backward(loss)
    return loss.detach()


def train_step(model, micro_batches: list[dict], optimizer, accelerator: Accelerator, max_grad_norm: float = 0.0):
    """One optimizer step on the global batch; returns this process's share of its loss."""
    loss = accumulate_gradients(model, micro_batches, accelerator)
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        accelerator.unwrap_model(model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss


# ---------------------------------------------------------------------------------------------------- data


def parse_cluster(value: str) -> int | None:
    if value == "all":
        return None
    if not re.fullmatch(r"\d+", str(value)):
        raise InputError(f"--cluster must be a coarse cluster id (0, 1, ...) or 'all', got {value!r}.")
    return int(value)


class TrainingData:
    """The run's pairs, checked up front, and the iterator of this process's micro-batches from a given step."""

    def __init__(self, args: ExpertTrainingArguments, cluster: int | None, accelerator: Accelerator):
        self.args = args
        self.cluster = cluster
        self.accelerator = accelerator
        self.pairs = load_pairs(args.dataset, args.split, args.streaming)
        columns = self.pairs.column_names or list(next(iter(self.pairs)).keys())
        check_columns(
            columns, args.image_column, args.caption_column, None if cluster is None else args.cluster_column
        )
        check_column_types(self.pairs.features, args.image_column, args.caption_column)
        self.stream_position = (0, 0)  # (epoch, micro-batches read in it) of a streamed run, for its checkpoints
        self.coarse_ids = self.without_caption = None
        if not args.streaming:  # a stream drops the pairs without a caption as they come (StreamingPairs)
            self.coarse_ids, self.without_caption = self.usable_coarse_ids()
            self.sampler(0)  # refuses now a cluster without pairs, or fewer pairs than one global batch

    def usable_coarse_ids(self) -> tuple[np.ndarray, int]:
        """Each row's coarse cluster id, NO_CLUSTER for rows without a usable caption; and how many those are.

        The seed reads no cluster ids (it trains on every cluster): its rows are all cluster 0.
        """
        args = self.args
        if self.cluster is None:
            coarse_ids = np.zeros(len(self.pairs), dtype=np.int64)
        else:
            coarse_ids = cluster_ids(self.pairs, args.cluster_column)
        captioned = caption_mask(self.pairs, args.caption_column)
        if not captioned.any():
            raise InputError(
                f"--dataset {args.dataset!r}: no pair has a usable caption (a non-blank string) in column "
                f"{args.caption_column!r} (--caption-column)."
            )
        coarse_ids[~captioned] = NO_CLUSTER
        without_caption = len(captioned) - int(captioned.sum())
        if without_caption:
            self.accelerator.print(f"Skipping {without_caption} of {len(captioned)} pairs without a usable caption.")
        return coarse_ids, without_caption

    def sampler(self, start_step: int) -> GlobalBatchSampler:
        args, accelerator = self.args, self.accelerator
        return GlobalBatchSampler(
            self.coarse_ids,
            self.cluster,
            args.out_of_cluster_ratio,
            args.seed,
            args.batch_size,
            args.gradient_accumulation_steps,
            accelerator.process_index,
            accelerator.num_processes,
            start_step,
            args.max_steps,
        )

    def summary(self) -> dict:
        """What the run trains on, for training_args.json."""
        if self.args.streaming:
            return {"streaming": True}
        sampler = self.sampler(0)
        in_cluster = int((self.coarse_ids == (0 if self.cluster is None else self.cluster)).sum())
        return {
            "dataset_pairs": len(self.pairs),
            "pairs_without_caption": self.without_caption,
            "cluster_pairs": in_cluster,
            "out_of_cluster_pairs_per_epoch": sampler.rows_per_epoch - in_cluster,
            "steps_per_epoch": sampler.steps_per_epoch,
        }

    def micro_batches(self, tokenizer, image_processor, max_length: int, start_step: int, stream_position=(0, 0)):
        """This process's micro-batches, `gradient_accumulation_steps` per optimizer step, from `start_step` on."""
        args = self.args
        transform = PairTransform(image_processor, args.image_column, args.caption_column)
        loader_kwargs = dict(num_workers=args.num_workers, collate_fn=PairCollator(tokenizer, max_length))
        if not args.streaming:
            dataset = PairDataset(self.pairs, transform, args.seed)
            yield from batches_of(DataLoader(dataset, batch_sampler=self.sampler(start_step), **loader_kwargs))
            return
        stream = StreamingPairs(
            self.pairs,
            transform,
            self.cluster,
            args.cluster_column,
            args.out_of_cluster_ratio,
            args.seed,
            args.shuffle_buffer,
            self.accelerator.process_index,
            self.accelerator.num_processes,
        )
        epoch, skip = stream_position
        while True:  # endless epochs; a resumed run re-reads and drops the batches of its epoch it had trained on
            stream.epoch = epoch
            read = 0
            loader = DataLoader(stream, batch_size=args.batch_size, drop_last=True, **loader_kwargs)
            for read, batch in enumerate(batches_of(loader), 1):
                if read > skip:
                    self.stream_position = (epoch, read)
                    yield batch
            if read == 0:
                raise InputError("The stream holds no full batch of this cluster's pairs for this process.")
            epoch, skip = epoch + 1, 0


def batches_of(loader: DataLoader):
    """The loader's batches. A DataLoader re-raises a worker's error with the worker's traceback in its message
    ("Caught InputError in DataLoader worker process N.\nOriginal Traceback ...\n<module>.InputError: <message>"):
    an InputError keeps only its own one-line message, as it has without workers."""
    try:
        yield from loader
    except InputError as error:
        message = str(error)
        if "DataLoader worker process" not in message.partition("\n")[0]:
            raise
        raise InputError(message.rstrip().rpartition("\n")[2].partition(": ")[2]) from None


# ---------------------------------------------------------------------------------------------------- files


def save_finished_run(run_dir: str, record: dict, *savables) -> None:
    """`save_pretrained` the model, tokenizer and image processor into a scratch folder and move each file into
    `run_dir` whole; then write the record with `final_step`, LAST. Until it is in, the record the run wrote when it
    started (without `final_step`) says that the directory holds no finished run, whatever files are already there."""
    scratch = os.path.join(run_dir, ".final.partial")
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run killed while saving
    for savable in savables:
        savable.save_pretrained(scratch)
    for name in os.listdir(scratch):
        os.replace(os.path.join(scratch, name), os.path.join(run_dir, name))
    os.rmdir(scratch)
    write_json(os.path.join(run_dir, TRAINING_ARGS), record)


def save_checkpoint(accelerator: Accelerator, run_dir: str, step: int, state: dict, savables, record: dict) -> str:
    """`save_state` into checkpoints/step_N.partial, made self-describing (config, tokenizer, processor, state),
    then renamed: a run killed while saving leaves no checkpoint that looks complete."""
    final = os.path.join(run_dir, CHECKPOINTS, f"step_{step}")
    partial = f"{final}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)  # model.safetensors, optimizer, and one RNG state per process
    accelerator.wait_for_everyone()  # every process's files are in before the folder is renamed
    if accelerator.is_main_process:
        for savable in savables:
            savable.save_pretrained(partial)
        write_json(os.path.join(partial, TRAINING_ARGS), record)
        write_json(os.path.join(partial, TRAINER_STATE), state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(run_dir: str, keep: int | None) -> None:
    if keep is not None:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(path)


def trackers(report_to: str) -> list[str] | None:
    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    if "tensorboard" in names and not is_tensorboard_available():
        raise InputError("--report-to tensorboard needs the `tensorboard` package: pip install tensorboard.")
    return names or None


def scalars(record: dict) -> dict:
    """A flat dict of numbers and strings, as trackers' hyper-parameter tables take."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        else:
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


# ---------------------------------------------------------------------------------------------------- training


PRECISIONS = [precision.value for precision in PrecisionType]
# flag: (the test a value must pass, the rule in words). NaN fails every comparison: it is refused too.
FLAG_RANGES = {
    "max_steps": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "checkpoint_every": (lambda v: v >= 1, "at least 1"),
    "log_every": (lambda v: v >= 1, "at least 1"),
    "shuffle_buffer": (lambda v: v >= 1, "at least 1"),
    "keep_checkpoints": (lambda v: v is None or v >= 1, "at least 1"),
    "warmup_steps": (lambda v: v >= 0, "at least 0"),
    "num_workers": (lambda v: v >= 0, "at least 0"),
    "learning_rate": (lambda v: v > 0, "positive"),
    "adam_epsilon": (lambda v: v > 0, "positive"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "at least 0"),
    "max_grad_norm": (lambda v: v >= 0, "at least 0 (0 does not clip)"),
    "out_of_cluster_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "mixed_precision": (lambda v: v is None or v in PRECISIONS, f"one of {PRECISIONS}"),
}


def check_arguments(args: ExpertTrainingArguments) -> None:
    for flag, (allowed, requirement) in FLAG_RANGES.items():
        if not allowed(getattr(args, flag)):
            raise InputError(f"--{flag.replace('_', '-')} must be {requirement}, got {getattr(args, flag)!r}.")
    if args.stop_at_step is not None and not 0 < args.stop_at_step <= args.max_steps:
        raise InputError(f"--stop-at-step must be in [1, --max-steps={args.max_steps}], got {args.stop_at_step}.")
    check_output_dir(args.output)


def train(args: ExpertTrainingArguments, on_checkpoint=None) -> str:
    """Train a seed or an expert; returns the output directory, a standalone CLIPModel directory.

    Every input is checked before the first step. `--resume` of a run already finished at this run's last step
    changes nothing. `on_checkpoint(step, path)` is called on every process after each checkpoint is complete.
    """
    check_arguments(args)
    cluster = parse_cluster(args.cluster)
    stop = min(args.stop_at_step or args.max_steps, args.max_steps)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=trackers(args.report_to),
        project_config=ProjectConfiguration(project_dir=args.output, logging_dir=os.path.join(args.output, "logs")),
    )
    if args.resume and final_step(args.output) == stop:
        accelerator.print(f"{args.output} holds this run, finished at step {stop}: nothing to do.")
        return args.output
    start = resolve_start(args, stop)
    set_seed(args.seed)
    model, tokenizer, image_processor = load_start(start)
    data = TrainingData(args, cluster, accelerator)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    stream_position = restore(start, args, accelerator, optimizer)

    # The first write into --output: it also clears the `final_step` of a run finished here before.
    record = run_record(args, start, accelerator, data)
    if accelerator.is_main_process:
        write_json(os.path.join(args.output, TRAINING_ARGS), record)
    accelerator.init_trackers("mode-expert", config=scalars(record))

    step, global_batch = start.step, record["run"]["global_batch_size"]
    config = accelerator.unwrap_model(model).config
    savables = (config, tokenizer, image_processor)
    batches = data.micro_batches(
        tokenizer, image_processor, config.text_config.max_position_embeddings, step, stream_position
    )
    # A `with`: the bar ends its line even when a step fails, so that an error is printed on a line of its own.
    with tqdm(total=stop, initial=step, disable=not accelerator.is_main_process, unit="step", desc="train") as bar:
        window_start, window_steps = time.perf_counter(), 0
        model.train()
        while step < stop:
            micro_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
            micro_batches = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro_batches]
            learning_rate = learning_rate_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            loss = train_step(model, micro_batches, optimizer, accelerator, args.max_grad_norm)
            step, window_steps = step + 1, window_steps + 1
            bar.update(1)
            if step % args.log_every == 0 or step == stop:
                samples_per_second = global_batch * window_steps / (time.perf_counter() - window_start)
                log_metrics(accelerator, model, bar, step, loss, learning_rate, samples_per_second)
                window_start, window_steps = time.perf_counter(), 0
            if step % args.checkpoint_every == 0 or step == stop:
                positions = gather_object([data.stream_position])
                state = {"step": step, "max_steps": args.max_steps, "stream_positions": positions}
                path = save_checkpoint(accelerator, args.output, step, state, savables, record)
                if accelerator.is_main_process:
                    prune_checkpoints(args.output, args.keep_checkpoints)
                if on_checkpoint is not None:
                    on_checkpoint(step, path)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record["run"]["final_step"] = step
        save_finished_run(args.output, record, accelerator.unwrap_model(model), tokenizer, image_processor)
    accelerator.end_training()
    return args.output


def log_metrics(accelerator: Accelerator, model, bar, step: int, loss, learning_rate: float, samples_per_second):
    metrics = {
        "train/loss": accelerator.reduce(loss, "mean").item(),
        "train/learning_rate": learning_rate,
        "train/logit_scale": accelerator.unwrap_model(model).logit_scale.exp().item(),
        "train/samples_per_second": samples_per_second,
    }
    accelerator.log(metrics, step=step)
    bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", samples_s=f"{samples_per_second:.1f}")


def restore(start: Start, args, accelerator: Accelerator, optimizer) -> tuple[int, int]:
    """Load a fork's or a resumed run's Accelerate state: weights, optimizer state, RNG. Returns, for a streamed run
    that resumes, where its stream stood."""
    if not start.checkpoint:
        return 0, 0
    with naming_failures(start_flag(start), start.checkpoint):
        accelerator.load_state(start.checkpoint)
    set_hyperparameters(optimizer, args)
    if start.kind == "resume":
        state = read_json(os.path.join(start.checkpoint, TRAINER_STATE))
        return resume_stream_position(state, accelerator) if args.streaming else (0, 0)
    set_seed(args.seed)  # a fork: the expert's own random streams, not those the seed had reached
    return 0, 0


def resume_stream_position(state: dict, accelerator: Accelerator) -> tuple[int, int]:
    positions = state["stream_positions"]
    if len(positions) != accelerator.num_processes:
        raise InputError(
            f"This streamed run was checkpointed on {len(positions)} processes: resume it on as many, "
            f"not {accelerator.num_processes}."
        )
    return tuple(positions[accelerator.process_index])


def base_model(start: Start) -> str | None:
    """The Hub checkpoint this run's weights descend from (None when they started random): for model cards."""
    if start.kind == "weights":
        return None if os.path.isdir(start.source) else start.source
    if start.kind == "fork":
        return read_json(os.path.join(start.checkpoint, TRAINING_ARGS))["run"].get("base_model")
    return None


def run_record(args, start: Start, accelerator: Accelerator, data: TrainingData) -> dict:
    """training_args.json: the flags, and the facts of the run they do not say."""
    global_batch = args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    origin = {"start": start.kind, "start_source": start.source, "start_checkpoint": start.checkpoint}
    origin["start_step"] = start.step
    origin["base_model"] = base_model(start)
    if start.kind == "resume":  # keep how the run first started; list the checkpoints it resumed from
        first = read_json(os.path.join(start.checkpoint, TRAINING_ARGS))["run"]
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
            "cluster": data.cluster,
            "data_variant": variant,
            **origin,
            "num_processes": accelerator.num_processes,
            "global_batch_size": global_batch,
            "mixed_precision": accelerator.mixed_precision,
            "data": data.summary(),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "accelerate": accelerate.__version__,
                "datasets": datasets.__version__,
            },
        },
    }
