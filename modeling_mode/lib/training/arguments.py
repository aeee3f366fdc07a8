"""`ExpertTrainingArguments`: the flags of train/expert.py, checked as they are parsed.

Defaults are OpenAI CLIP's hyper-parameters and the paper's data recipe. Where transformers' Trainer or its run_clip
example has a flag for the same thing, its name is accepted too (`--output_dir`, `--save_steps`, ...).
"""

import re
from dataclasses import dataclass, field

from accelerate.utils import DynamoBackend, PrecisionType, is_tensorboard_available

from ...families import FAMILIES
from ..core.errors import InputError

PRECISIONS = [precision.value for precision in PrecisionType]
COMPILE_BACKENDS = [backend.value.lower() for backend in DynamoBackend if backend != DynamoBackend.NO]
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
    "peak_tflops": (lambda v: v is None or v > 0, "positive"),
    "out_of_cluster_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "mixed_precision": (lambda v: v is None or v in PRECISIONS, f"one of {PRECISIONS}"),
    "torch_compile_backend": (lambda v: v in COMPILE_BACKENDS, f"one of {COMPILE_BACKENDS}"),
    "model_family": (lambda v: v is None or v in FAMILIES, f"one of {list(FAMILIES)}"),
    "lora_rank": (lambda v: v is None or v >= 1, "at least 1"),
    "lora_alpha": (lambda v: v is None or v > 0, "positive"),
}


@dataclass
class ExpertTrainingArguments:
    """Flags of `train/expert.py`. Checks that need no file are made here; the others in `train`, before any write."""

    dataset: str = field(
        metadata={
            "help": "Pairs: a save_to_disk directory (e.g. the clustering's DIR/dataset), a Hub id or a folder "
            "of data files (parquet, webdataset .tar shards, ...).",
            "aliases": ["--dataset_name"],
        }
    )
    output: str = field(
        metadata={
            "help": "Run directory: the final CLIPModel and its CLIPProcessor, training_args.json, checkpoints, logs.",
            "aliases": ["--output_dir"],
        }
    )
    max_steps: int = field(
        metadata={"help": "Optimizer steps of the whole schedule, counted from the seed's step 0 for a fork."}
    )
    cluster: str = field(default="all", metadata={"help": "Coarse cluster id this expert trains on, or 'all' (seed)."})
    init: str | None = field(
        default=None,
        metadata={
            "help": "Start from: a checkpoint of this script (checkpoints/step_N, or a run directory: its last "
            "checkpoint) -> weights, optimizer state and schedule position; a CLIP, MetaCLIP 2, SigLIP or SigLIP 2 "
            "directory or Hub id -> weights only.",
            "aliases": ["--model_name_or_path", "--model-name-or-path"],
        },
    )
    config: str | None = field(
        default=None,
        metadata={"help": "Start from random weights: 'tiny', 'small' or a config json file of a --model-family."},
    )
    model_family: str | None = field(
        default=None,
        metadata={
            "help": f"The family of the experts: {', '.join(FAMILIES)}. It sizes --config tiny|small (default clip); "
            "a --config file, an --init checkpoint say their own, which it must then name if given."
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue from the last checkpoint in --output, if there is one. --resume_from_checkpoint is the "
            "same flag: unlike the Trainer's, it takes no path (to start from another run's checkpoint, use --init).",
            "aliases": ["--resume_from_checkpoint"],
        },
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
    labels: str | None = field(
        default=None,
        metadata={
            "help": "The clustering's labels table (its OUTPUT/labels), made from --dataset: the pairs' coarse ids "
            "are joined from it on the fly (by row; streamed, by data file and key) instead of read from "
            "--cluster-column. --streaming then reads the data files (parquet or .tar) itself, and a resumed run "
            "skips the files it had trained on without reading them."
        },
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "Pairs per process and micro-batch.", "aliases": ["--per_device_train_batch_size"]},
    )
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
    bf16: bool = field(default=False, metadata={"help": "--mixed-precision bf16, as transformers spells it."})
    fp16: bool = field(default=False, metadata={"help": "--mixed-precision fp16, as transformers spells it."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the backward."})
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the model with torch.compile (Accelerate's dynamo backend); captions are then padded to "
            "the text tower's full length, so that every step has the same shapes."
        },
    )
    torch_compile_backend: str = field(
        default="inductor",
        metadata={"help": "The torch.compile backend of --torch-compile, as `accelerate launch --dynamo_backend`."},
    )
    checkpoint_every: int = field(
        default=1000, metadata={"help": "Save an Accelerate checkpoint every N steps.", "aliases": ["--save_steps"]}
    )
    keep_checkpoints: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the N newest checkpoints (default: all, to fork from any).",
            "aliases": ["--save_total_limit"],
        },
    )
    stop_at_step: int | None = field(
        default=None,
        metadata={
            "help": "Stop (with a checkpoint) at this step, part-way through the --max-steps schedule: e.g. a "
            "seed to fork experts from, as the paper does at epoch 27 of 32."
        },
    )
    log_every: int = field(
        default=10,
        metadata={"help": "Log the loss and throughput every N steps.", "aliases": ["--logging_steps"]},
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={
            "help": "The device's peak TFLOP/s in the run's precision, that the logged MFU is a share of; by default "
            "a large matrix multiply is timed at start-up."
        },
    )
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate trackers, comma-separated, or none."})
    num_workers: int = field(
        default=4,
        metadata={
            "help": "Data loader worker processes per training process.",
            "aliases": ["--dataloader_num_workers"],
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation, data order and augmentation."})
    lora_rank: int | None = field(
        default=None,
        metadata={
            "help": "Train low-rank adapters (LoRA, with PEFT) of this rank on the start's frozen weights instead of "
            "every weight (the default, full fine-tuning). Only the adapters train: the temperature logit_scale (and "
            "SigLIP's logit_bias) stay the seed's. A fork takes the seed's weights and schedule position, not its "
            "optimizer state. The final folder holds the adapters merged into the weights, and alone in adapter/."
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={"help": "LoRA's alpha: the adapters are scaled by alpha / rank. Default: the rank (a scale of 1)."},
    )
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated names of the Linear modules of the towers' encoder layers that get adapters. "
            "Default: q_proj,k_proj,v_proj,out_proj,fc1,fc2, every attention and MLP Linear (CLIP, MetaCLIP 2, "
            "SigLIP)."
        },
    )

    def __post_init__(self):
        for flag, (allowed, requirement) in FLAG_RANGES.items():
            if not allowed(getattr(self, flag)):
                raise InputError(f"--{flag.replace('_', '-')} must be {requirement}, got {getattr(self, flag)!r}.")
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= self.max_steps:
            raise InputError(f"--stop-at-step must be in [1, --max-steps={self.max_steps}], got {self.stop_at_step}.")
        if self.bf16 or self.fp16:  # transformers' flags: one precision, agreeing with --mixed-precision if given
            precision = "bf16" if self.bf16 else "fp16"
            if (self.bf16 and self.fp16) or self.mixed_precision not in (None, precision):
                given = [flag for flag, on in (("--bf16", self.bf16), ("--fp16", self.fp16)) if on]
                given += [f"--mixed-precision {self.mixed_precision}"] if self.mixed_precision else []
                raise InputError(f"{' and '.join(given)} name different precisions: give one.")
            self.mixed_precision, self.bf16, self.fp16 = precision, False, False
        if self.init and self.config:
            raise InputError("Pass either --init (pretrained or seed weights) or --config (random weights), not both.")
        if self.cluster != "all" and not re.fullmatch(r"\d+", str(self.cluster)):
            raise InputError(f"--cluster must be a coarse cluster id (0, 1, ...) or 'all', got {self.cluster!r}.")
        lora_options = {"--lora-alpha": self.lora_alpha, "--lora-target-modules": self.lora_target_modules}
        if self.lora_rank is None and (given := [flag for flag, value in lora_options.items() if value is not None]):
            raise InputError(
                f"{' and '.join(given)} set LoRA adapters: give --lora-rank too (without it, every weight trains)."
            )
        if self.lora_target_modules is not None and not self.lora_target_modules.strip(" ,"):
            raise InputError("--lora-target-modules names no module: give comma-separated names, e.g. q_proj,v_proj.")
        self.trackers()  # refuses a tracker that is not installed

    def check_schedule(self) -> None:
        """Refuse a warm-up that the schedule ends before (the default 2000 steps against a short run): a run to train
        would never reach its learning rate. Checked when a run starts: arguments built for other uses may not."""
        if self.warmup_steps > self.max_steps:
            raise InputError(
                f"--warmup-steps {self.warmup_steps} is more than --max-steps {self.max_steps}: the schedule would "
                "end before its learning rate warmed up; give fewer --warmup-steps."
            )

    @property
    def cluster_id(self) -> int | None:
        """The coarse cluster an expert trains on; None for the seed, which trains on all of them."""
        return None if self.cluster == "all" else int(self.cluster)

    @property
    def last_step(self) -> int:
        """The step this run stops at: --stop-at-step, else the end of the schedule."""
        return self.stop_at_step or self.max_steps

    def trackers(self) -> list[str] | None:
        """--report-to as Accelerate's `log_with`."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip() not in ("", "none")]
        if "tensorboard" in names and not is_tensorboard_available():
            raise InputError("--report-to tensorboard needs the `tensorboard` package: pip install tensorboard.")
        return names or None
