"""A MODE folder read as untrusted input, like a labels table: its files must lie inside it, and its config is checked
against its weights before anything is built from it.

Every loader of a MODE folder in the library (evaluation, grow, shrink, push) goes through `check_mode_folder`. It
reads the folder's listing, config.json and the safetensors headers only, so a link to a file elsewhere, a config
edited by hand or weights cut or swapped end in one line naming what is wrong, before a tensor is allocated: not in a
traceback deep in a loader, a MODE written with NaN centres, or a hang (a config saying a billion experts would have
the loader build them all). The remote-code files that travel to the Hub hold no such check: they may import only
torch and transformers.
"""

import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ...adapters import ADAPTER_STACKS
from ...configuration_mode_clip import MODE_CONFIGS, ModeCLIPConfig
from ...modeling_mode_clip import MODE_MODELS, ModeCLIPModel
from .checks import check_weight_files, files_inside, naming_failures
from .errors import InputError
from .files import read_json

CENTROIDS = "fine_centroids"
ROUTER = "router_text_model."
# What evaluation reads of a Hub MODE to check it: not its seed/, which can be large (the optimizer's state).
WEIGHT_PATTERNS = ["config.json", "model*.safetensors", "model.safetensors.index.json"]
EXPERT_TENSOR = re.compile(r"experts\.(\d+)\.")
LAYER = re.compile(r"\.layers?\.(\d+)\.")  # a transformers encoder's layer N: CLIP's `layers.N`, BERT's `layer.N`


def layered(config: dict) -> tuple:
    """Where each config that sets a number of layers keeps them in the weights: expert 0's towers (a LoRA MODE's
    shared seed's), and the router."""
    experts = "seed_model." if config.get("lora_rank") else "experts.0."
    return (
        (("expert_config", "text_config"), f"{experts}text_model."),
        (("expert_config", "vision_config"), f"{experts}vision_model."),
        (("router_text_config",), ROUTER),
    )


def held_experts(config: dict, shapes: dict[str, tuple[int, ...]]) -> set[int]:
    """The expert indices the weights hold: full experts' `experts.N.` tensors, or the depth of a LoRA MODE's adapter
    stacks (none where their depths disagree)."""
    if not config.get("lora_rank"):
        return {int(match[1]) for name in shapes if (match := EXPERT_TENSOR.match(name))}
    depths = {shape[0] for name, shape in shapes.items() if name.endswith(ADAPTER_STACKS) and shape}
    return set(range(depths.pop())) if len(depths) == 1 else set()


def local_mode(model: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """The folder of the MODE `model`: a local folder, or a Hub repo's snapshot at `revision` (the Hub cache's; of
    `allow_patterns` only, when given)."""
    if os.path.isdir(model):
        if revision is not None:
            raise InputError(f"--revision {revision!r} names a Hub revision, but --model {model!r} is a local folder.")
        return Path(model)
    from huggingface_hub import snapshot_download

    with naming_failures("--model", model):
        return Path(snapshot_download(model, revision=revision, allow_patterns=allow_patterns))


def weight_shapes(folder: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Each stored tensor's shape, from the safetensors headers alone."""
    shapes = {}
    for file in check_weight_files(folder, what):
        with safe_open(str(file), framework="numpy") as weights:
            shapes |= {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    return shapes


def stored_centroids(folder: str | os.PathLike, what: str) -> np.ndarray | None:
    """The MODE's fine centres as stored (float32), or None where its weights hold none."""
    for file in check_weight_files(folder, what):
        with safe_open(str(file), framework="numpy") as weights:
            if CENTROIDS in weights.keys():
                return np.ascontiguousarray(weights.get_tensor(CENTROIDS), dtype=np.float32)
    return None


def check_mode_folder(folder: str | os.PathLike, what: str = "--model") -> ModeCLIPConfig:
    """The config of the MODE saved in `folder`, once its files are found to lie inside it (`files_inside`) and the
    config to describe the weights there: as many experts as they hold, each with every tensor of its architecture, as
    many fine clusters as centres, centres of the router's size and finite. Each number that makes a loader build
    something (experts, layers, centres) is compared with the weights before the config is even parsed; then a MODE
    of the config, built on the meta device, must match them."""
    folder = Path(folder)
    files_inside(folder, what)

    def refused(problem: str) -> InputError:
        return InputError(f"{what} {str(folder)!r}: {problem}: it is no MODE as saved (edited, or cut short?); save "
                          "or download it again.")  # fmt: skip

    with naming_failures(what, str(folder)):
        config = read_json(folder / "config.json")
    if not isinstance(config, dict) or config.get("model_type") not in MODE_CONFIGS:
        raise InputError(
            f"{what} {str(folder)!r} holds no MODE: its config.json's model_type is not one of "
            f"{', '.join(MODE_CONFIGS)}."
        )
    shapes = weight_shapes(folder, what)
    if problem := count_mismatch(config, shapes):
        raise refused(problem)
    with naming_failures(what, str(folder)):
        parsed = MODE_CONFIGS[config["model_type"]].from_pretrained(folder)
    if problem := tensor_mismatch(parsed, shapes):
        raise refused(problem)
    if not np.isfinite(stored_centroids(folder, what)).all():
        raise refused(f"its {CENTROIDS} hold NaN or infinite values, which would make every routing weight NaN")
    return parsed


def count_mismatch(config: dict, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What in the raw config counts more (or fewer) experts, fine clusters or layers than the weights hold."""
    experts = held_experts(config, shapes)
    num_experts = config.get("num_experts")
    if not isinstance(num_experts, int) or len(experts) != num_experts or experts != set(range(num_experts)):
        held = f"experts {min(experts)} to {max(experts)} ({len(experts)} in all)" if experts else "no expert"
        return f"config.json says num_experts {num_experts!r}, its weights hold {held}"
    centroids = shapes.get(CENTROIDS)
    if centroids is None or len(centroids) != 2:
        return f"its weights hold no {CENTROIDS} matrix (shape {centroids})"
    fine_to_coarse, num_fine = config.get("fine_to_coarse"), config.get("num_fine_clusters", centroids[0])
    if not isinstance(fine_to_coarse, list) or len(fine_to_coarse) != centroids[0] or num_fine != centroids[0]:
        listed = len(fine_to_coarse) if isinstance(fine_to_coarse, list) else "no"
        return (f"config.json says num_fine_clusters {num_fine!r} and maps {listed} fine clusters (fine_to_coarse), "
                f"its weights hold {centroids[0]} fine centres")  # fmt: skip
    for keys, prefix in layered(config):
        sub = config
        for key in keys:
            sub = sub.get(key) if isinstance(sub, dict) else None
        layers = {int(match[1]) for name in shapes if name.startswith(prefix) and (match := LAYER.search(name))}
        said = sub.get("num_hidden_layers") if isinstance(sub, dict) else None
        if layers and said is not None and said != len(layers):  # a router named otherwise is checked once built
            return f"config.json's {'.'.join(keys)} says num_hidden_layers {said!r}, its weights hold {len(layers)}"
    return None


def tensor_mismatch(config: ModeCLIPConfig, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """A tensor of the experts or the centres that a MODE of `config` has but the weights lack, or any tensor they
    hold in another shape (the first, named). A router may lack parts its routing never runs (a sentence encoder's
    pooler, with mean pooling): transformers initialises those."""
    with torch.device("meta"):  # shapes without memory
        expected = {name: tuple(t.shape) for name, t in MODE_MODELS[config.model_type](config).state_dict().items()}
    if missing := sorted(name for name in expected.keys() - shapes.keys() if not name.startswith(ROUTER)):
        return f"its weights lack {len(missing)} of the MODE's tensors, e.g. {missing[0]!r}"
    for name, shape in expected.items():
        if name in shapes and shapes[name] != shape:
            return f"{name!r} is {list(shapes[name])} in its weights, {list(shape)} in the MODE its config describes"
    return None


def load_mode(folder: str | os.PathLike, what: str = "--model") -> ModeCLIPModel:
    """The MODE saved in `folder`, checked first (`check_mode_folder`)."""
    config = check_mode_folder(folder, what)
    with naming_failures(what, str(folder)):
        return MODE_MODELS[config.model_type].from_pretrained(folder)
