"""Where a run starts: random weights (--config), a pretrained expert's weights or a fork of a seed checkpoint
(--init), or its own last checkpoint (--resume), of any MODE family (`modeling_mode.families`). It is resolved from the
flags and files alone, before anything loads, its family included; then the model and its processor are loaded, and
the checkpoint's Accelerate state restored."""

import json
import math
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, ProcessorMixin

from ...families import FAMILIES, family_of
from ..core.checks import naming_failures
from ..core.errors import InputError
from ..core.processors import load_processor
from . import lora
from .arguments import ExpertTrainingArguments
from .checkpoints import CHECKPOINTS, TRAINER_STATE, checkpoint_state, is_checkpoint, latest_checkpoint
from .optimization import set_hyperparameters
from .outputs import read_record
from .processors import char_level_config, char_level_tokenizer, random_start_image_processor, random_start_processor

# PyTorch's fused scaled-dot-product attention (flash or memory-efficient kernels where the device has them), not
# the eager matmul-softmax-matmul: transformers 5.24 picks it by default; asked for explicitly, a change of default or
# a config that names another one does not slow training down.
ATTENTION = "sdpa"
RANDOM_CLIP_SIZES = {  # width, layers, heads, image size, patch size, context, MLP ratio
    "tiny": (32, 2, 4, 32, 8, 32, 2),  # tests: seconds on a CPU
    "small": (256, 4, 4, 64, 8, 77, 4),  # real runs on a CPU
}
# The shortest text context of a SigLIP family: the zero-shot pipeline pads siglip texts to max_length 64.
SIGMOID_MIN_CONTEXT = 64


@dataclass
class Start:
    """Where a run starts: `kind` is 'config', 'weights', 'fork' (a seed checkpoint) or 'resume'."""

    kind: str
    source: str
    checkpoint: str | None = None  # Accelerate state to load: optimizer, schedule position (and RNG on resume)
    step: int = 0  # the checkpoint's step, where the schedule goes on from
    family: str = "clip"  # the model_type of the weights it starts from (`families.FAMILIES`), set by `resolve_start`
    lora: bool = False  # the run trains LoRA adapters (--lora-rank): a fork then takes no optimizer state

    @classmethod
    def from_checkpoint(cls, kind: str, source: str, checkpoint: str) -> "Start":
        return cls(kind, source, checkpoint, checkpoint_state(checkpoint)["step"])

    @property
    def flag(self) -> str:
        """How an error names the files a run starts from."""
        return {"resume": "the checkpoint to resume (--resume)", "config": "--config"}.get(self.kind, "--init")

    def describe(self) -> str:
        """How the run starts, in a sentence for the log."""
        family = "" if self.family == "clip" else f" of a {FAMILIES[self.family].title}"  # CLIP's as before families
        forked = (
            "weights and schedule position, not its optimizer state (the new LoRA adapters, which alone train, "
            "have none)"
            if self.lora
            else "weights, optimizer state and schedule position"
        )
        return {
            "config": f"Starting from random weights{family} (--config {self.source}).",
            "weights": f"Starting from the pretrained weights of {self.source}.",
            "fork": f"Forking the seed checkpoint {self.checkpoint} at step {self.step}: its {forked}.",
            "resume": f"Resuming from the checkpoint {self.checkpoint}, at step {self.step}.",
        }[self.kind]

    def base_model(self) -> str | None:
        """The Hub checkpoint the weights descend from (None when they started random): for model cards."""
        if self.kind == "weights":
            return None if os.path.isdir(self.source) else self.source
        if self.kind == "fork":
            return read_record(self.checkpoint)["run"].get("base_model")
        return None


def resolve_start(args: ExpertTrainingArguments) -> Start:
    """Where the run starts and its family, read from the flags and files alone: checked before anything is loaded."""
    start = resolve_origin(args)
    start.family = start_family(start, args)
    start.lora = args.lora_rank is not None
    lora.check_start(start, args)
    return start


def resolve_origin(args: ExpertTrainingArguments) -> Start:
    """The run's own last checkpoint (--resume), else its --init or --config."""
    checkpoint = latest_checkpoint(args.output)
    if checkpoint and not args.resume:
        raise InputError(
            f"--output {args.output!r} holds checkpoints of an earlier run: pass --resume to continue it, or give "
            "another --output."
        )
    if checkpoint:
        start = Start.from_checkpoint("resume", checkpoint, checkpoint)
        if start.step > args.last_step:
            raise InputError(
                f"--output {args.output!r} was checkpointed at step {start.step}, past this run's last step "
                f"{args.last_step} (--stop-at-step, --max-steps)."
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
            f"({TRAINER_STATE}), a run with {CHECKPOINTS}/step_N, nor a model directory (config.json)."
        )
    if os.path.isfile(args.init):
        raise InputError(f"--init {args.init!r} is a file: give a model directory or Hub id, or a checkpoint.")
    return Start("weights", args.init)  # a Hub id; a path that does not exist is refused when it is loaded


def start_family(start: Start, args: ExpertTrainingArguments) -> str:
    """The family of the weights `start` holds, from its config alone: refused unless a MODE family, or unless the
    one --model-family names when it is given."""
    if start.kind == "config":
        model_type = random_config(start.source, args.model_family or "clip").model_type
    else:
        model_type = config_model_type(start)
    try:
        family = family_of(model_type).model_type
    except ValueError as error:
        raise InputError(f"{start.flag} {start.checkpoint or start.source!r}: {error}") from None
    if args.model_family not in (None, family):
        raise InputError(
            f"--model-family {args.model_family} names another family than {start.flag} {start.source!r}, "
            f"a {family} model: leave --model-family out, or give a start of that family."
        )
    return family


def config_model_type(start: Start) -> str | None:
    """The model_type in the config.json of a start's folder, or of a Hub id's (from its config alone)."""
    path = start.checkpoint or start.source
    with naming_failures(start.flag, path):
        if os.path.isdir(path):
            with open(os.path.join(path, "config.json"), encoding="utf-8") as file:
                return json.load(file).get("model_type")
        return AutoConfig.from_pretrained(path).model_type


def random_config(name: str, family: str = "clip") -> PretrainedConfig:
    """'tiny' or 'small' of `family` (SigLIP's with at least `SIGMOID_MIN_CONTEXT`), or a config json file of any
    family (its model_type says which; CLIP without one)."""
    if name in RANDOM_CLIP_SIZES:
        width, layers, heads, image_size, patch_size, context, mlp_ratio = RANDOM_CLIP_SIZES[name]
        if FAMILIES[family].padding == "max_length":
            context = max(context, SIGMOID_MIN_CONTEXT)
        fields = char_level_config(family, width, layers, heads, image_size, patch_size, context, mlp_ratio)
        return AutoConfig.for_model(family, **fields)
    if not os.path.isfile(name):
        raise InputError(f"Unknown --config {name!r}: use 'tiny', 'small' or the path of a config json file.")
    try:
        with open(name, encoding="utf-8") as file:
            fields = json.load(file)
        model_type = fields.pop("model_type", "clip")
        family_of(model_type)
        return AutoConfig.for_model(model_type, **fields)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"--config {name!r}: {error}") from None


def random_expert(name: str, family: str = "clip") -> tuple[PreTrainedModel, ProcessorMixin]:
    """Random weights of `family` (a config file's own), with a character-level tokenizer and a PIL image processor
    made without downloads, in the processor AutoProcessor loads back for the family."""
    config = random_config(name, family)
    family, context = family_of(config), config.text_config.max_position_embeddings
    tokenizer = char_level_tokenizer(context)
    if config.text_config.vocab_size < len(tokenizer):
        raise InputError(
            f"--config {name!r} has a vocabulary of {config.text_config.vocab_size}, fewer than the {len(tokenizer)} "
            "tokens of the character tokenizer made for random starts."
        )
    if family.padding == "max_length" and context < SIGMOID_MIN_CONTEXT:
        raise InputError(
            f"--config {name!r}: a {family.title} text tower needs a context of at least {SIGMOID_MIN_CONTEXT} "
            f"(texts are padded to 64 for its zero-shot scores), not {context}."
        )
    vision = config.vision_config
    # SigLIP 2's vision tower is sized in patches: its training crops are the square grid of that many.
    image_size = getattr(vision, "image_size", None) or math.isqrt(vision.num_patches) * vision.patch_size
    image_processor = random_start_image_processor(family.model_type, image_size, vision.patch_size)
    model = AutoModel.from_config(config, attn_implementation=ATTENTION)
    if family.has_logit_bias:
        # The SigLIP paper's start (Zhai et al. 2023, section 3.2): t' = log 10 and b = -10, so that the many
        # negative pairs start near their target and the first steps do not only push the bias down (transformers
        # initialises both at 0).
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10))
            model.logit_bias.fill_(-10.0)
    return model, random_start_processor(family.model_type, image_processor, tokenizer)


def random_clip(name: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random CLIP: `random_expert` of the clip family (a config file's own family)."""
    return random_expert(name, "clip")


def load_start(start: Start) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model of the start's family (in float32, the master weights' precision) and the processor it starts from."""
    if start.kind == "config":
        return random_expert(start.source, start.family)
    path = start.checkpoint or start.source
    with naming_failures(start.flag, path):
        if start.kind == "resume" and start.lora:  # its weights file holds the wrapped model's: `restore` loads it
            model = AutoModel.from_config(AutoConfig.from_pretrained(path), attn_implementation=ATTENTION)
        else:
            model = AutoModel.from_pretrained(path, dtype=torch.float32, attn_implementation=ATTENTION)
        return model, load_processor(path)


def restore(start: Start, args: ExpertTrainingArguments, accelerator: Accelerator, optimizer) -> tuple[int, int]:
    """Load a fork's or a resumed run's Accelerate state: weights, optimizer state, RNG (a LoRA fork: none of it).
    Returns, for a streamed run that resumes, where its stream stood."""
    if not start.checkpoint:
        return 0, 0
    if start.kind == "fork" and start.lora:
        # The seed's weights came with the model (`load_start`), its step with `start`; its optimizer state holds
        # moments of the full weights, which no longer train, and none of the adapters' (`describe` logs it).
        set_seed(args.seed)
        return 0, 0
    with naming_failures(start.flag, start.checkpoint):
        accelerator.load_state(start.checkpoint)
    set_hyperparameters(optimizer, args)
    if start.kind == "resume":
        return resume_stream_position(start, accelerator) if args.streaming else (0, 0)
    set_seed(args.seed)  # a fork: the expert's own random streams, not those the seed had reached
    return 0, 0


def resume_stream_position(start: Start, accelerator: Accelerator) -> tuple[int, int]:
    positions = checkpoint_state(start.checkpoint)["stream_positions"]
    if len(positions) != accelerator.num_processes:
        raise InputError(
            f"This streamed run was checkpointed on {len(positions)} processes: resume it on as many, "
            f"not {accelerator.num_processes}."
        )
    return tuple(positions[accelerator.process_index])
