"""LoRA experts (--lora-rank): an expert trained as low-rank adapters on its seed's frozen weights, with PEFT.

Each targeted Linear of the towers' encoder layers gets `W + (alpha / r) * B @ A`, B starting at zero, so that the
expert starts as its seed. Only the adapters train: the temperature (and SigLIP's logit bias), the embeddings, norms
and projections stay the seed's. No dropout on the adapters (their function at inference is the one trained), no
bias training, no rsLoRA scaling. The final folder holds the adapters merged into the weights (a plain model folder,
loaded as any other) and the adapters alone in PEFT's format (`outputs.ADAPTER`), for a MODE that stores its seed once.

peft is imported only by a LoRA run: full fine-tuning neither needs it nor pays its import.
"""

import copy
from pathlib import Path

import torch

from ...adapters import ENCODER_LAYER
from ...configuration_mode_clip import LORA_TARGET_MODULES
from ..core.errors import InputError
from ..core.files import atomic_directory
from .arguments import ExpertTrainingArguments
from .outputs import ADAPTER, read_record

DEFAULT_TARGET_MODULES = ",".join(LORA_TARGET_MODULES)  # CLIP's, MetaCLIP 2's and SigLIP's names alike


def settings(args: ExpertTrainingArguments) -> dict | None:
    """The run's LoRA settings, as its record notes them; None for full fine-tuning."""
    if args.lora_rank is None:
        return None
    targets = [name.strip() for name in (args.lora_target_modules or DEFAULT_TARGET_MODULES).split(",")]
    alpha = args.lora_alpha if args.lora_alpha is not None else args.lora_rank  # scale alpha / r = 1
    return {"rank": args.lora_rank, "alpha": alpha, "target_modules": [name for name in targets if name]}


def encoder_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear modules of the towers' encoder layers, by full dotted name: those adapters may go into."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ENCODER_LAYER.search(name)
    }


def targeted_layers(model: torch.nn.Module, lora: dict) -> dict[str, torch.nn.Linear]:
    """The Linears that `lora`'s target modules name (by their last dotted parts, as PEFT matches them), checked: a
    name that matches none, and a rank above a layer's width (min of its input and output features), are refused."""
    linears = encoder_linears(model)
    matches = lambda target: [name for name in linears if name == target or name.endswith("." + target)]  # noqa: E731
    if missing := [target for target in lora["target_modules"] if not matches(target)]:
        have = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise InputError(
            f"--lora-target-modules {','.join(missing)}: the model has no such Linear module in its encoder layers; "
            f"it has {', '.join(have)}."
        )
    targeted = {name: linears[name] for target in lora["target_modules"] for name in matches(target)}
    name, layer = min(targeted.items(), key=lambda item: min(item[1].in_features, item[1].out_features))
    width = min(layer.in_features, layer.out_features)
    if lora["rank"] > width:
        raise InputError(
            f"--lora-rank {lora['rank']} is above the width of the targeted layer {name} ({width}: the smaller of its "
            f"{layer.in_features} input and {layer.out_features} output features): give a rank of at most {width}."
        )
    return targeted


def lora_config(model: torch.nn.Module, lora: dict):
    """PEFT's LoraConfig of `lora` for `model`, once its targets are checked (`targeted_layers`)."""
    from peft import LoraConfig

    targeted = targeted_layers(model, lora)
    # Short names, as given (readable in adapter_config.json); the Linears outside the encoder layers that they
    # would also match are excluded by their full names.
    excluded = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name not in targeted
        and any(name == target or name.endswith("." + target) for target in lora["target_modules"])
    ]
    return LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        target_modules=lora["target_modules"],
        exclude_modules=excluded or None,
        lora_dropout=0.0,
        bias="none",
        use_rslora=False,
    )


def adapt(model: torch.nn.Module, args: ExpertTrainingArguments) -> torch.nn.Module:
    """`model` wrapped in a PeftModel with fresh adapters, for a LoRA run (its checks made first); else as it is.
    PEFT freezes every weight but the adapters', so that the optimizer (`build_optimizer`) holds the adapters only."""
    lora = settings(args)
    if lora is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, lora))


def check_start(start, args: ExpertTrainingArguments) -> None:
    """Refuse, from the files alone, a fork of a LoRA run's checkpoint (its weights file holds the frozen weights and
    the adapters apart, which a model does not load: fork from its seed's checkpoint) and a resume whose LoRA
    settings are not those the run was checkpointed with."""
    if not start.checkpoint:
        return
    checkpointed = read_record(start.checkpoint)["run"].get("lora")
    if start.kind == "fork" and checkpointed:
        raise InputError(
            f"--init {start.source!r}: {start.checkpoint} is a checkpoint of a LoRA run, whose weights are its seed's "
            "and its adapters apart: fork from the seed's checkpoint instead."
        )
    if start.kind == "resume" and checkpointed != settings(args):
        raise InputError(
            f"--output {args.output!r} was checkpointed with LoRA settings {checkpointed}, not this run's "
            f"{settings(args)}: resume with the same --lora-rank, --lora-alpha and --lora-target-modules."
        )


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (a transformers model, or a PeftModel around one) on the current (meta) device: the same
    modules, the same parameters frozen, without their values (`loop.step_flops`)."""
    if not hasattr(model, "peft_config"):
        return type(model)._from_config(model.config)
    from peft import get_peft_model

    base = model.get_base_model()
    return get_peft_model(type(base)._from_config(base.config), copy.deepcopy(model.peft_config["default"]))


def final_model(model: torch.nn.Module, args: ExpertTrainingArguments, run_dir: str) -> torch.nn.Module:
    """The model a run's final folder holds. A LoRA run first saves its adapters alone into `run_dir`/adapter (whole,
    or not at all), then merges them into the weights (in place: training is over), so that the folder stays a plain
    model folder that every consumer loads as before."""
    if args.lora_rank is None:
        return model
    with atomic_directory(Path(run_dir, ADAPTER)) as scratch:
        model.save_pretrained(scratch)
        Path(scratch, "README.md").unlink(missing_ok=True)  # PEFT's empty card template: the run's card is elsewhere
    return model.merge_and_unload()
