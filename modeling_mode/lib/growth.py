"""Change a MODE's experts without retraining the others: take one out (`shrink`).

MODE's experts share nothing but the seed they forked from, so one can leave (a data source taken down, a bad crawl)
while every other keeps its weights exactly: the shrunk MODE's remaining experts are the same tensors, byte for byte
(`expert_digests` checks it on the saved files), the removed expert's fine centres leave the router, and the routing
renormalises over the rest. The MODE's seed (`seed/`, the checkpoint its experts forked from) stays with it. The
config's `changelog` says what changed, when and why; the model card lists it.

    python train/shrink.py --model org/mode-clip --remove-expert 2 --reason "source X withdrawn" --output runs/mode-3

`mode-shrink` and `python -m modeling_mode.lib.growth` take the same flags.
"""

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..configuration_mode_clip import ModeCLIPConfig
from ..modeling_mode_clip import ModeCLIPModel
from . import cli
from .assembly import ASSEMBLY, SEED_FOLDER, check_output
from .errors import InputError, naming_failures
from .files import atomic_directory, read_json, write_json
from .hub import HubArguments
from .publish import exiting_on_push_failure, push_run

EXPERT_PREFIX = "experts."


def local_mode(model: str, revision: str | None = None) -> Path:
    """The folder of the MODE `model`: a local folder, or a Hub repo's snapshot at `revision` (the Hub cache's)."""
    if os.path.isdir(model):
        if revision is not None:
            raise InputError(f"--revision {revision!r} names a Hub revision, but --model {model!r} is a local folder.")
        return Path(model)
    from huggingface_hub import snapshot_download

    with naming_failures("--model", model):
        return Path(snapshot_download(model, revision=revision))


def expert_digests(model_dir: str | os.PathLike) -> list[str]:
    """One SHA-256 per expert of the MODE saved in `model_dir`, over its tensors' names (within the expert) and
    bytes, as stored: equal digests mean the same weights, whatever the expert's index in either MODE."""
    tensors = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as stored:
            for name in stored.keys():
                if name.startswith(EXPERT_PREFIX):
                    index, _, within = name.removeprefix(EXPERT_PREFIX).partition(".")
                    tensors.setdefault(int(index), {})[within] = stored.get_tensor(name)
    digests = []
    for index in sorted(tensors):
        digest = hashlib.sha256()
        for within, tensor in sorted(tensors[index].items()):
            digest.update(within.encode() + str(tensor.dtype).encode() + str(list(tensor.shape)).encode())
            digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests


def check_expert_id(expert: int, num_experts: int, flag: str = "--remove-expert") -> None:
    if not 0 <= expert < num_experts:
        raise InputError(f"{flag} {expert}: this MODE's experts are 0 to {num_experts - 1}.")


def without_expert(model: ModeCLIPModel, expert: int, reason: str) -> ModeCLIPModel:
    """`model` without expert `expert` and its fine centres; the other experts are the same modules (not copies), and
    the experts after it move up one index. The config's changelog gains the removal."""
    config = model.config
    check_expert_id(expert, config.num_experts)
    if config.num_experts == 1:
        raise InputError(f"--remove-expert {expert}: it is the MODE's only expert, and a MODE needs one.")
    keep = torch.tensor([coarse != expert for coarse in config.fine_to_coarse])
    fine_to_coarse = [coarse - (coarse > expert) for coarse in config.fine_to_coarse if coarse != expert]
    experts = [module for k, module in enumerate(model.experts) if k != expert]
    change = {
        "change": "removed expert",
        "expert": expert,
        "fine_clusters": int((~keep).sum()),
        "reason": reason,
        "experts_after": len(experts),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    fields = {
        **config.to_dict(),
        "num_experts": len(experts),
        "num_fine_clusters": len(fine_to_coarse),
        "fine_to_coarse": fine_to_coarse,
        "changelog": [*getattr(config, "changelog", []), change],
    }
    return with_parts(ModeCLIPConfig.from_dict(fields), experts, model.router_text_model, model.fine_centroids[keep])


def with_parts(config: ModeCLIPConfig, experts: list, router_text_model, fine_centroids) -> ModeCLIPModel:
    """A MODE of `config` made of the given modules and centres, as they are (none is initialised or copied)."""
    with torch.device("meta"):
        model = ModeCLIPModel(config)
    model.experts = nn.ModuleList(experts)
    model.router_text_model = router_text_model
    model.fine_centroids = fine_centroids.clone()
    return model


def shrink(model: str, expert: int, reason: str, output: str, revision: str | None = None) -> Path:
    """Save the MODE `model` without expert `expert` in `output`, whole or not at all; check that every other expert's
    weights are byte-identical to the original's there. Returns `output`."""
    if not reason.strip():
        raise InputError("--reason is empty: say why the expert leaves (the model card's changelog records it).")
    check_output(output)
    source = local_mode(model, revision)
    with naming_failures("--model", model):
        config = ModeCLIPConfig.from_pretrained(source)
    check_expert_id(expert, config.num_experts)  # before the weights are read
    with naming_failures("--model", model):
        original = ModeCLIPModel.from_pretrained(source)
    shrunk = without_expert(original, expert, reason)
    before = expert_digests(source)
    with atomic_directory(output) as scratch:
        copy_carried_files(source, scratch)
        shrunk.save_pretrained(scratch)
        if (source / ASSEMBLY).is_file():
            write_json(scratch / ASSEMBLY, assembly_without(read_json(source / ASSEMBLY), expert))
        kept = [digest for k, digest in enumerate(before) if k != expert]
        if expert_digests(scratch) != kept:  # never publish experts that changed on the way
            raise RuntimeError(f"the experts saved in {output} are not byte-identical to {model}'s: nothing written.")
    return Path(output)


# What a changed MODE does not take from the one it came from: what save_pretrained writes anew, the records of its
# experts (rewritten), its evaluations (of another model) and its card (pushed anew).
NOT_CARRIED = {"config.json", "model.safetensors.index.json", "README.md", "eval_results.json", ASSEMBLY}


def copy_carried_files(source: Path, destination: Path) -> None:
    """Copy what a changed MODE keeps of the one it came from, as it is (a Hub snapshot's links followed): its
    tokenizer(s) and image processor files, and its seed (`seed/`, whole), from which it can grow."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        in_seed = relative.parts[0] == SEED_FOLDER
        skip = not in_seed and (relative.name in NOT_CARRIED or relative.suffix in (".safetensors", ".py"))
        if path.is_file() and not skip and not any(part.startswith(".") for part in relative.parts):
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination / relative)


def assembly_without(record: dict, expert: int) -> dict:
    """The assembly record of a MODE that lost `expert`: the per-expert lists and the clustering's sizes without it."""
    record = dict(record)
    for key in ("experts", "expert_training"):
        if isinstance(record.get(key), list):
            record[key] = [item for k, item in enumerate(record[key]) if k != expert]
    clustering = dict(record.get("clustering") or {})
    if isinstance(clustering.get("coarse_sizes"), list):
        clustering["coarse_sizes"] = [size for k, size in enumerate(clustering["coarse_sizes"]) if k != expert]
        record["clustering"] = clustering
    return record


@dataclass
class ShrinkArguments(HubArguments):
    """Flags of `train/shrink.py`; `--push_to_hub` pushes the shrunk MODE as a new commit of `--hub_model_id`."""

    model: str = field(metadata={"help": "The MODE: a folder or a Hub id."})
    remove_expert: int = field(metadata={"help": "The index of the expert to take out (0 to num_experts - 1)."})
    reason: str = field(metadata={"help": "Why it leaves: the model card's changelog records it."})
    output: str = field(metadata={"help": "Folder of the shrunk MODE (written whole or not at all)."})
    revision: str | None = field(default=None, metadata={"help": "The --model Hub revision to start from."})


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(ShrinkArguments, __doc__, argv)
    output = shrink(args.model, args.remove_expert, args.reason, args.output, args.revision)
    print(f"MODE model without expert {args.remove_expert} saved to {output}")
    if args.push_to_hub:
        message = f"Remove expert {args.remove_expert}: {args.reason}"
        with exiting_on_push_failure():
            commits = push_run(output, args.hub_model_id, private=args.hub_private_repo, commit_message=message)
        print(f"pushed: {commits[0].commit_url}")


def command() -> None:
    """`mode-shrink`, `python -m modeling_mode.lib.growth` and train/shrink.py."""
    cli.run(main)


if __name__ == "__main__":
    command()
