"""AdamW with CLIP's weight-decay groups, and the learning-rate schedule: linear warm-up, then cosine decay."""

import math

import torch

from .arguments import ExpertTrainingArguments


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
