"""LoRA experts that share one seed: one copy of the seed's weights, and per expert a low-rank adapter of some of its
linear layers (Hu et al., 2021). Expert k's layer computes `x W^T + b + scale * (x A_k^T) B_k^T`.

The adapters are applied, never merged: N experts cost the memory of the seed plus their adapters, and expert k runs
as the seed does, plus two thin matrix products per adapted layer. Training them is PEFT's work
(`train/expert.py --lora-rank`); this file needs only torch, so that the MODE loads from the Hub without PEFT.
"""

import copy
import re
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

# The names a saved LoRA MODE's adapter stacks end with, [num_experts, ...] each.
ADAPTER_STACKS = (".lora_A", ".lora_B")
# Adapters go into the towers' encoder layers only: elsewhere a name may belong to a Linear whose weight its parent
# reads directly (SigLIP's pooling head is an nn.MultiheadAttention with an `out_proj`), where an adapter would never
# take part in the forward.
ENCODER_LAYER = re.compile(r"(^|\.)encoder\.layers\.\d+\.")


class ExpertAdaptedLinear(nn.Linear):
    """A seed's linear layer with one low-rank adapter per expert, `lora_A` [num_experts, rank, in] and `lora_B`
    [num_experts, out, rank]. With no expert active (`active_expert` None) it is the seed's own layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool, num_experts: int, rank: int, scale: float):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_A = nn.Parameter(torch.zeros(num_experts, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, out_features, rank))
        self.scale = scale
        self.active_expert = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = super().forward(hidden_states)
        k = self.active_expert
        if k is None:
            return output
        return output + self.scale * F.linear(F.linear(hidden_states, self.lora_A[k]), self.lora_B[k])


def adapted_layer_names(model: nn.Module, target_modules: list[str]) -> list[str]:
    """The module paths of the linear layers of `model`'s encoder layers whose last name is one of `target_modules`."""
    targets = set(target_modules)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets and ENCODER_LAYER.search(name)
    ]


def add_expert_adapters(model: nn.Module, target_modules: list[str], num_experts: int, rank: int, scale: float):
    """Replace the targeted linear layers of `model` (the seed) by `ExpertAdaptedLinear`s, keeping their weights."""
    names = adapted_layer_names(model, target_modules)
    if not names:
        raise ValueError(f"the seed has no linear layer named {', '.join(target_modules)}: nothing to adapt.")
    for name in names:
        linear = model.get_submodule(name)
        adapted = ExpertAdaptedLinear(
            linear.in_features, linear.out_features, linear.bias is not None, num_experts, rank, scale
        ).to(device=linear.weight.device, dtype=linear.weight.dtype)
        adapted.weight, adapted.bias = linear.weight, linear.bias
        model.set_submodule(name, adapted)


def adapted_layers(model: nn.Module) -> dict[str, ExpertAdaptedLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, ExpertAdaptedLinear)}


def set_adapters(model: nn.Module, adapters: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> None:
    """Make `adapters` (one {layer path: (lora_A [rank, in], lora_B [out, rank])} per expert) the experts of the
    adapted `model`, in that order: each layer's stacks are replaced, so their number may change (grow, shrink)."""
    layers = adapted_layers(model)
    extra = sorted({name for expert in adapters for name in expert} - layers.keys())
    if extra:
        raise ValueError(f"adapters of layers the LoRA settings do not target: {', '.join(extra[:5])}.")
    for name, layer in layers.items():
        rank = layer.lora_A.shape[1]
        for k, expert in enumerate(adapters):
            if name not in expert:
                raise ValueError(f"expert {k} has no adapter of {name}, which the LoRA settings target.")
            lora_a, lora_b = expert[name]
            if tuple(lora_a.shape) != (rank, layer.in_features) or tuple(lora_b.shape) != (layer.out_features, rank):
                raise ValueError(
                    f"expert {k}'s adapter of {name} has shapes {list(lora_a.shape)} and {list(lora_b.shape)}, not "
                    f"{[rank, layer.in_features]} and {[layer.out_features, rank]} (rank {rank})."
                )
        like = layer.weight
        layer.lora_A = nn.Parameter(torch.stack([expert[name][0] for expert in adapters]).detach().to(like))
        layer.lora_B = nn.Parameter(torch.stack([expert[name][1] for expert in adapters]).detach().to(like))


@contextmanager
def expert_active(model: nn.Module, k: int):
    """Run `model` (the seed with adapters) as expert k inside the block."""
    layers = adapted_layers(model).values()
    for layer in layers:
        layer.active_expert = k
    try:
        yield
    finally:
        for layer in layers:
            layer.active_expert = None


class LoraExpert:
    """Expert k of a LoRA MODE, used like a model of its own: each call runs the shared seed with k's adapters on.

    Its attributes (`config`, `logit_scale`, `logit_bias`, `device`, ...) are the seed's: LoRA experts keep the seed's
    temperature and bias.
    """

    def __init__(self, seed_model: nn.Module, index: int):
        self.seed_model = seed_model
        self.index = index

    def __getattr__(self, name):
        if name in ("seed_model", "index"):  # not set yet (copy, pickle): no recursion through the seed
            raise AttributeError(name)
        return getattr(self.seed_model, name)

    def __call__(self, **inputs):
        with expert_active(self.seed_model, self.index):
            return self.seed_model(**inputs)

    def get_text_features(self, **inputs):
        with expert_active(self.seed_model, self.index):
            return self.seed_model.get_text_features(**inputs)

    def get_image_features(self, **inputs):
        with expert_active(self.seed_model, self.index):
            return self.seed_model.get_image_features(**inputs)

    def merged(self) -> nn.Module:
        """This expert as a model of its own: a copy of the seed with this expert's adapters merged into its weights
        (the memory of one more model), e.g. to save or push it alone."""
        model = copy.deepcopy(self.seed_model)
        for name, layer in adapted_layers(model).items():
            weight = layer.weight
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                               device=weight.device, dtype=weight.dtype)  # fmt: skip
            with torch.no_grad():
                linear.weight.copy_(weight + layer.scale * layer.lora_B[self.index] @ layer.lora_A[self.index])
                if layer.bias is not None:
                    linear.bias.copy_(layer.bias)
            model.set_submodule(name, linear)
        return model


__all__ = [
    "ADAPTER_STACKS",
    "ExpertAdaptedLinear",
    "LoraExpert",
    "add_expert_adapters",
    "adapted_layers",
    "expert_active",
    "set_adapters",
]
