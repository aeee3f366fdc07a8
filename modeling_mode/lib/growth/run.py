"""Changing a MODE's experts without retraining the others: `grow` (new data experts join it) and `shrink` (one
leaves), their arguments, and each step of a grow. How and why, flag by flag: `command_line`, whose docstring is
train/grow.py's and train/shrink.py's --help."""

import dataclasses
import logging
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from ...adapters import set_adapters
from ...configuration_mode_clip import ModeCLIPConfig
from ...modeling_mode_clip import MODE_MODELS, ModeCLIPModel, _architecture
from ...tokenization_mode_clip import ROUTER_TOKENIZER
from ..assembly.outputs import ASSEMBLY, SEED_FOLDER, ModelOutputArguments, check_apart, check_output
from ..clustering.outputs import read_finished_run
from ..clustering.run import ClusterArguments
from ..core import cli
from ..core.checks import files_inside, naming_failures
from ..core.entry_points import EntryPointError, entry_point_command, run_entry_point
from ..core.errors import InputError
from ..core.files import atomic_directory, read_json, write_json
from ..core.mode_folder import check_mode_folder, load_mode, local_mode
from ..core.resume_guard import check_same_settings
from ..core.status import report
from ..data.pairs import (
    caption_mask,
    check_column_types,
    check_columns,
    check_data_file_columns,
    load_pairs,
    streamed_data_files,
)
from ..evaluation.outputs import model_revision
from ..training.arguments import ExpertTrainingArguments
from ..training.checkpoints import checkpoint_state, is_checkpoint
from ..training.outputs import TRAINING_ARGS, is_finished, read_adapters
from .outputs import expert_digests

EVAL_RESULTS = "eval_results.json"
GROW_SETTINGS = "grow.json"  # in the work folder: what its steps are made from
logger = logging.getLogger(__name__)


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
    experts = [part for k, part in enumerate(expert_parts(model)) if k != expert]
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
        "expert_lineage": [entry for k, entry in enumerate(lineage_of(config)) if k != expert],
    }
    return with_parts(type(config).from_dict(fields), experts, model, model.fine_centroids[keep])


def expert_parts(model: ModeCLIPModel) -> list:
    """What makes each expert its own: its module, or a LoRA expert's adapters ({layer path: (lora_A, lora_B)})."""
    if model.config.lora_rank:
        return [model.expert_adapters(k) for k in range(model.config.num_experts)]
    return list(model.experts)


def with_parts(config: ModeCLIPConfig, experts: list, original: ModeCLIPModel, fine_centroids) -> ModeCLIPModel:
    """A MODE of `config` made of the given experts (`expert_parts`), `original`'s router (and a LoRA MODE's seed)
    and the centres, as they are (none is initialised or copied; a LoRA MODE's adapter stacks are rebuilt)."""
    with torch.device("meta"):
        model = MODE_MODELS[config.model_type](config)
    if config.lora_rank:
        model.seed_model = original.seed_model
        set_adapters(model.seed_model, experts)
    else:
        model.experts = nn.ModuleList(experts)
    model.router_text_model = original.router_text_model
    model.fine_centroids = fine_centroids.clone()
    return model


def shrink(
    model: str, expert: int, reason: str, output: str, revision: str | None = None, overwrite_output_dir: bool = False
) -> Path:
    """Save the MODE `model` without expert `expert` in `output`, whole or not at all; check that every other expert's
    weights are byte-identical to the original's there. Returns `output`."""
    if not reason.strip():
        raise InputError("--reason is empty: say why the expert leaves (the model card's changelog records it).")
    check_output(output, overwrite_output_dir, source=model)
    source = local_mode(model, revision)
    config = check_mode_folder(source)
    check_expert_id(expert, config.num_experts)  # before the weights are read
    original = load_mode(source)
    shrunk = without_expert(original, expert, reason)
    before = expert_digests(source)
    with atomic_directory(output) as scratch:
        copy_carried_files(source, scratch)
        carry_eval_results(source, scratch, model_revision(original.config.to_dict()))
        shrunk.save_pretrained(scratch)
        if (source / ASSEMBLY).is_file():
            write_json(scratch / ASSEMBLY, assembly_without(read_json(source / ASSEMBLY), expert))
        kept = [digest for k, digest in enumerate(before) if k != expert]
        if expert_digests(scratch) != kept:  # never publish experts that changed on the way
            raise RuntimeError(f"the experts saved in {output} are not byte-identical to {model}'s: nothing written.")
    return Path(output)


# What a changed MODE does not take from the one it came from as it is: its weights and config (saved anew, with the
# remote code, after the carried files), its experts' records and evaluations (rewritten) and its card.
NOT_CARRIED = {"config.json", "model.safetensors.index.json", "README.md", EVAL_RESULTS, ASSEMBLY}


def carry_eval_results(source: Path, destination: Path, revision: int) -> None:
    """The parent's evaluation rows, each marked with the revision it measured (the parent's, unless marked): the
    card shows them as history, and takes only the new revision's rows into its model-index."""
    if (source / EVAL_RESULTS).is_file():
        rows = [{"revision": revision} | row for row in read_json(source / EVAL_RESULTS)]
        write_json(destination / EVAL_RESULTS, rows)


def copy_carried_files(source: Path, destination: Path) -> None:
    """Copy what a changed MODE keeps of the one it came from, as it is (only its files inside it, a Hub snapshot's
    links followed into its cache: `files_inside`): its tokenizer(s) and image processor files, and its seed (`seed/`,
    whole), from which it can grow."""
    for relative in files_inside(source, "--model"):
        in_seed = relative.parts[0] == SEED_FOLDER
        skip = not in_seed and (relative.name in NOT_CARRIED or relative.suffix == ".safetensors")
        if not skip and not any(part.startswith(".") for part in relative.parts):
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, destination / relative)


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


def growth_source(model: str, revision: str | None, seed_checkpoint: str | None) -> tuple[Path, ModeCLIPConfig, Path]:
    """(the MODE's folder, its config, the seed to fork from), refused before any work if the MODE cannot grow."""
    source = local_mode(model, revision)
    config = check_mode_folder(source)
    if getattr(config, "router_space", None) != "clustering-encoder" or not getattr(
        config, "fine_distance_quantiles", None
    ):
        raise InputError(
            f"--model {model} does not route with its clustering's encoder and centres as fitted, or records no "
            "distances of its pairs to them: new pairs cannot be measured against its clusters. Grow a MODE "
            "assembled with --router clustering-encoder (the default for a sentence-encoder clustering)."
        )
    seed = Path(seed_checkpoint) if seed_checkpoint else source / SEED_FOLDER
    if not is_checkpoint(seed):
        given = f"--seed-checkpoint {seed_checkpoint}" if seed_checkpoint else f"--model {model}'s {SEED_FOLDER}/"
        raise InputError(
            f"{given} is missing or no training checkpoint: new experts fork from the checkpoint the MODE's experts "
            "forked from. Give it with --seed-checkpoint (a train/expert.py checkpoint folder)."
        )
    return source, config, seed


def export_router(source: Path, folder: Path) -> None:
    """The MODE's router as a sentence encoder of its own folder (weights and tokenizer), for the clustering."""
    if (folder / "config.json").is_file():
        return
    model = load_mode(source)
    with atomic_directory(folder) as scratch:
        model.router_text_model.save_pretrained(scratch)
        for relative in files_inside(source, "--model"):
            if relative.parent == Path(ROUTER_TOKENIZER):
                shutil.copyfile(source / relative, scratch / relative.name)


def expert_settings(source: Path) -> dict:
    """The settings the MODE's experts trained with (its assembly record's first), to train new ones alike."""
    record = read_json(source / ASSEMBLY) if (source / ASSEMBLY).is_file() else {}
    training = record.get("expert_training") or [{}]
    names = {spec.name for spec in dataclasses.fields(ExpertTrainingArguments)}
    return {name: value for name, value in training[0].get("args", {}).items() if name in names}


def grown(
    original: ModeCLIPModel, experts: list, centroids: torch.Tensor, fine_to_coarse: list[int], change: dict,
    lineage: list[dict],
) -> ModeCLIPModel:  # fmt: skip
    """`original` with `experts` appended (their fine centres and fine-to-expert map, numbered from 0) and the
    changelog's `change`; the original's experts are its own modules."""
    config, n = original.config, original.config.num_experts
    fields = {
        **config.to_dict(),
        "num_experts": n + len(experts),
        "num_fine_clusters": config.num_fine_clusters + len(fine_to_coarse),
        "fine_to_coarse": [*config.fine_to_coarse, *(n + k for k in fine_to_coarse)],
        "changelog": [*getattr(config, "changelog", []), change],
        "expert_lineage": [*lineage_of(config), *lineage],
    }
    centres = torch.cat([original.fine_centroids, centroids.to(original.fine_centroids)])
    return with_parts(type(config).from_dict(fields), [*expert_parts(original), *experts], original, centres)


def lineage_of(config: ModeCLIPConfig) -> list[dict]:
    """Each expert's lineage: recorded, or (a MODE as assembled) the assembly's."""
    return getattr(config, "expert_lineage", None) or [{"added": "assembled"} for _ in range(config.num_experts)]


@dataclass
class GrowArguments(ModelOutputArguments):
    """Flags of `train/grow.py`; `--push_to_hub` pushes the grown MODE as a new commit of `--hub_model_id`."""

    model: str = field(metadata={"help": "The MODE: a folder or a Hub id (with its seed/)."})
    dataset: str = field(metadata={"help": "The new pairs: a save_to_disk folder, a data folder or a Hub dataset."})
    output: str = field(metadata={"help": "Folder of the grown MODE (written whole or not at all)."})
    new_experts: int = field(default=1, metadata={"help": "Coarse clusters of the new pairs: one new expert each."})
    fine_clusters: int | None = field(
        default=None, metadata={"help": "Fine clusters of the new pairs (default: the MODE's per expert, times K)."}
    )
    fit_quantile: str = field(
        default="0.99",
        metadata={"help": "A new pair fits the MODE if as close to a fine centre as this quantile of its own pairs."},
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset."})
    image_column: str = field(default="image", metadata={"help": "Column of the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column of the captions."})
    seed_checkpoint: str | None = field(
        default=None, metadata={"help": "The checkpoint to fork from (default: the MODE's seed/)."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "The schedule's end (default: as the MODE's experts were trained)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds the clustering and the new experts' training."})
    revision: str | None = field(default=None, metadata={"help": "The --model Hub revision to start from."})
    work_dir: str | None = field(default=None, metadata={"help": "The steps' outputs (default: OUTPUT-work)."})
    launcher: str = field(
        default=sys.executable,
        metadata={"help": 'Runs clustering and training, e.g. "accelerate launch --num_processes 8".'},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.new_experts < 1:
            raise InputError(
                f"--new-experts must be at least 1 (an expert per new coarse cluster), got {self.new_experts}."
            )
        if self.fine_clusters is not None and self.fine_clusters < self.new_experts:
            raise InputError(
                f"--fine-clusters {self.fine_clusters} is fewer than --new-experts {self.new_experts}: each new "
                "expert needs at least one fine cluster."
            )


def grow(args: GrowArguments) -> Path:
    """Grow the MODE `args.model` by `args.new_experts` experts trained on `args.dataset`'s pairs that do not fit
    it; save it in `args.output` with its old experts byte-identical. Returns `args.output`.

    Everything that can be checked before the first step is: the output, the MODE, its router and seed, the schedule,
    the new pairs' columns and their number against the fine clusters. A step that then refuses its input leaves no
    work folder that this run made."""
    check_output(args.output, args.overwrite_output_dir, source=args.model)
    source, config, seed = growth_source(args.model, args.revision, args.seed_checkpoint)
    work = Path(args.work_dir or f"{args.output.rstrip('/')}-work")
    check_apart(work, "--work-dir", args.model)
    settings = expert_settings(source)
    max_steps = schedule_end(args, settings, seed)
    fine_clusters, chosen = new_fine_clusters(args, config)
    check_new_pairs(args, fine_clusters, chosen)
    launcher = shlex.split(args.launcher)
    made_here = not work.exists()
    record_grow_settings(work, args, seed, max_steps)
    clusters = work / "clusters"
    clustering = ClusterArguments(
        dataset=args.dataset, split=args.split, caption_column=args.caption_column, encoder=str(work / "router"),
        pooling=config.router_pooling, fine_clusters=fine_clusters, experts=args.new_experts, seed=args.seed,
        output=str(clusters), beside=str(source), beside_quantile=args.fit_quantile,
    )  # fmt: skip
    export_router(source, work / "router")
    try:
        run_step(launcher, "modeling_mode.lib.clustering", clustering)
    except EntryPointError as error:
        if error.returncode == cli.BAD_INPUT and made_here:  # refused: nothing of this run is worth resuming
            shutil.rmtree(work)
        said = f"{str(error).rstrip('.')} (grow clustered with {chosen}; --fit-quantile {args.fit_quantile})."
        raise EntryPointError(said, error.returncode) from error
    fit, report = read_finished_run(clusters)
    experts = []
    for k in range(args.new_experts):
        training = ExpertTrainingArguments(**{
            **settings, "dataset": str(clusters / "dataset"), "split": "train", "image_column": args.image_column,
            "caption_column": args.caption_column, "cluster": str(k), "init": str(seed), "max_steps": max_steps,
            "output": str(work / "experts" / f"expert-{k}"), "resume": True, "seed": args.seed, "labels": None,
            "streaming": False, "config": None, "stop_at_step": None,
        })  # fmt: skip
        if not is_finished(training.output):
            run_step(launcher, "modeling_mode.lib.training", training)
        experts.append(training.output)
    return save_grown(args, source, fit, report, experts)


def schedule_end(args: GrowArguments, settings: dict, seed: Path) -> int:
    """The step the new experts train to: --max-steps, else their siblings' (grow's default); past the seed's."""
    given = args.max_steps is not None
    max_steps = args.max_steps if given else settings.get("max_steps")
    if max_steps is None:
        raise InputError(f"--model {args.model} records no training settings: give --max-steps.")
    with naming_failures("The seed checkpoint", str(seed)):
        fork = int(checkpoint_state(seed)["step"])
    if max_steps <= fork:
        named = f"--max-steps {max_steps}" if given else f"the MODE's experts' schedule end, {max_steps} (the default)"
        raise InputError(
            f"{named} is not past step {fork} of the seed {str(seed)!r}, where the new experts fork: they would "
            "train for no step. Give a larger --max-steps."
        )
    return max_steps


def new_fine_clusters(args: GrowArguments, config: ModeCLIPConfig) -> tuple[int, str]:
    """The number of fine clusters of the new pairs, and how it was chosen (for the messages that name it)."""
    if args.fine_clusters is not None:
        return args.fine_clusters, f"--fine-clusters {args.fine_clusters}"
    per_expert = max(1, config.num_fine_clusters // config.num_experts)
    fine_clusters = args.new_experts * per_expert
    return fine_clusters, (f"--fine-clusters {fine_clusters}, the default: the MODE's {per_expert} per expert times "
                           f"--new-experts {args.new_experts}")  # fmt: skip


def check_new_pairs(args: GrowArguments, fine_clusters: int, chosen: str) -> None:
    """The new pairs' image and caption columns, and (where the corpus is not data files, counted only as they are
    read) enough captioned pairs for `fine_clusters`."""
    if files := streamed_data_files(args.dataset, args.split):
        check_data_file_columns(files[0], args.image_column, args.caption_column)
        return
    pairs = load_pairs(args.dataset, args.split)
    check_columns(pairs.column_names, args.image_column, args.caption_column, None)
    check_column_types(pairs.features, args.image_column, args.caption_column)
    captioned = int(caption_mask(pairs, args.caption_column).sum())
    if captioned == 0:
        raise InputError(f"None of the {len(pairs)} pairs has a caption in --caption-column {args.caption_column!r}.")
    if captioned < fine_clusters:
        raise InputError(
            f"--dataset {args.dataset!r} has {captioned} pairs with a caption, too few for {chosen}: give fewer "
            "--fine-clusters, or more pairs."
        )


def record_grow_settings(work: Path, args: GrowArguments, seed: Path, max_steps: int) -> None:
    """Record what the work folder's steps are made from; refuse to resume them with anything else."""
    settings = {
        "model": args.model, "revision": args.revision, "seed_checkpoint": str(seed), "dataset": args.dataset,
        "split": args.split, "image_column": args.image_column, "caption_column": args.caption_column,
        "new_experts": args.new_experts, "fine_clusters": args.fine_clusters, "fit_quantile": args.fit_quantile,
        "max_steps": max_steps, "seed": args.seed,
    }  # fmt: skip
    path = work / GROW_SETTINGS
    if path.is_file():
        check_same_settings(read_json(path), settings, f"--work-dir {str(work)!r} holds a grow made",
                            "give another --work-dir (or --output), or the flags it was made with.")  # fmt: skip
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def run_step(launcher: list[str], module: str, arguments) -> None:
    """Run one of the library's entry points as its own process (`accelerate launch ... -m MODULE` alike), through
    the protocol the main job's stages use (`entry_points`): its output passed on as it comes, its progress reported
    on to grow's own parent, if any; a step that refuses its input fails the grow with the step's own error."""
    command = entry_point_command(module, arguments, tuple(launcher))
    logger.info(" ".join(command))
    run_entry_point(command, on_progress=lambda bar: report(progress=bar))


def new_expert_parts(original: ModeCLIPModel, expert_dirs: list[str]) -> list:
    """The new experts as the MODE holds them (`expert_parts`): their models, or for a LoRA MODE only their adapters,
    checked to be the MODE's architecture and LoRA settings."""
    config = original.config
    if any(
        _architecture(AutoConfig.from_pretrained(path)) != _architecture(config.expert_config) for path in expert_dirs
    ):
        raise InputError("the new experts' architecture differs from the MODE's: they did not fork from its seed.")
    if not config.lora_rank:
        return [AutoModel.from_pretrained(path) for path in expert_dirs]
    mode_settings = {
        "rank": config.lora_rank,
        "alpha": config.lora_alpha,
        "target_modules": sorted(config.lora_target_modules),
    }
    parts = []
    for path in expert_dirs:
        settings, adapters = read_adapters(path)
        if settings != mode_settings:
            raise InputError(f"the new expert {path!r} has LoRA settings {settings}, the MODE's are {mode_settings}.")
        parts.append(adapters)
    return parts


def save_grown(args: GrowArguments, source: Path, fit, report: dict, expert_dirs: list[str]) -> Path:
    original = load_mode(source)
    new_experts = new_expert_parts(original, expert_dirs)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    n, added = original.config.num_experts, len(new_experts)
    change = {
        "change": "added experts",
        "experts": list(range(n, n + added)),
        "data": args.dataset,
        "new_pairs": int(sum(report["coarse_sizes"])),
        "fitting_pairs": int(report.get("num_fitting_pairs", 0)),
        "fine_clusters": fit.num_fine_clusters,
        "reason": f"new data: {args.dataset}",
        "experts_after": n + added,
        "date": today,
    }
    lineage = [{"added": today, "data": args.dataset, "split": args.split, "from_revision": args.revision,
                "coarse_cluster": k} for k in range(added)]  # fmt: skip
    model = grown(original, new_experts, torch.from_numpy(fit.fine_centroids), fit.fine_to_coarse.tolist(), change,
                  lineage)  # fmt: skip
    before = expert_digests(source)
    with atomic_directory(args.output) as scratch:
        copy_carried_files(source, scratch)
        carry_eval_results(source, scratch, model_revision(original.config.to_dict()))
        model.save_pretrained(scratch)
        record = read_json(source / ASSEMBLY) if (source / ASSEMBLY).is_file() else {}
        record["expert_training"] = [*record.get("expert_training", []),
                                     *(read_json(Path(path, TRAINING_ARGS)) for path in expert_dirs)]  # fmt: skip
        write_json(scratch / ASSEMBLY, record)
        if expert_digests(scratch)[:n] != before:  # never publish old experts that changed on the way
            raise RuntimeError(f"the old experts saved in {args.output} are not byte-identical to {args.model}'s.")
    logger.info(f"{change['fitting_pairs']} new pairs fit the MODE's clusters; {change['new_pairs']} trained "
                f"{added} new expert(s): {args.output}")  # fmt: skip
    return Path(args.output)


@dataclass
class ShrinkArguments(ModelOutputArguments):
    """Flags of `train/shrink.py`; `--push_to_hub` pushes the shrunk MODE as a new commit of `--hub_model_id`."""

    model: str = field(metadata={"help": "The MODE: a folder or a Hub id."})
    remove_expert: int = field(metadata={"help": "The index of the expert to take out (0 to num_experts - 1)."})
    reason: str = field(metadata={"help": "Why it leaves: the model card's changelog records it."})
    output: str = field(metadata={"help": "Folder of the shrunk MODE (written whole or not at all)."})
    revision: str | None = field(default=None, metadata={"help": "The --model Hub revision to start from."})
