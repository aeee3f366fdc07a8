"""The main job's folder: the one place that knows the name of every folder, model and result row in it, what each
model of the job's experiments is, and when each output is finished.

    OUTPUT/
        recipe.json  timings.json  clip_config.json  report.md (with its PNG plots)
        data/        sources.json, and the offline corpus's sets: pairs/, eval/<task>/, retrieval/
        seed-<s>/    training seed s's replicate of the whole experiment:
            seed/                           the seed CLIP run; the experts fork at checkpoints/step_<seed_steps>
            clusters/<clustering>/          a clustering run
            experts/<ensemble>/expert-<k>/  an ensemble's expert runs
            models/<model>/                 the dense runs and the assembled ensembles
            results/<model>/                zeroshot-<task>.json and retrieval.json
            seed_curve.json                 the fork-point curve
            logs/<stage>.log

An experiment's models are typed specs, one type per kind (`SeedRun`, `DenseRun`, `Ensemble`, `GrownMode`,
`ShrunkMode`), each with its `Role`: the stages are built by dispatching on the spec's type, and the report finds a
model by its role, never by its name or its place in the list. Adding a baseline is adding a spec (`comparison`);
adding a routing, an entry of `ROUTINGS` in the model's configuration.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from pathlib import Path

from ..configuration_mode_clip import ROUTINGS
from ..lib.clustering.outputs import CLUSTERS_JSON, LABELLED_COPY, is_finished_run
from ..lib.evaluation.outputs import CLIP_NAME, EXPERT_NAME, MODE_NAME
from ..lib.training.outputs import is_finished
from .recipes import Recipe

# ----------------------------------------------------------------------------------------------- what is finished


def training_finished(path: Path) -> bool:
    """A training run's record says it saved its final model (written last: `training.is_finished`)."""
    return is_finished(path)


def clustering_finished(path: Path) -> bool:
    """A clustering run's report is written last and describes the centroids beside it (`read_finished_run`)."""
    return is_finished_run(path)


def model_finished(path: Path) -> bool:
    """An assembled MODE is written whole (a scratch folder renamed), config.json with the rest."""
    return (path / "config.json").is_file()


def file_finished(path: Path) -> bool:
    """A JSON output (the data's sources, a curve, an evaluation's results) is written atomically, after the rest."""
    return path.is_file()


@dataclass(frozen=True)
class Output:
    """What a stage makes, and the test its consumers apply to take it as complete: never merely present."""

    path: Path
    finished: Callable[[Path], bool]

    def is_finished(self) -> bool:
        return self.finished(self.path)


# ----------------------------------------------------------------------------------------------- the models

CLIP_ROW = ""  # a CLIP model's one row: itself
BEST_EXPERT_ROW = "best expert"


def routing_row(routing: str) -> str:
    """The report's row of an ensemble routed by `routing` (`ROUTINGS`): 'routed (paper)', ..., 'uniform'."""
    return "uniform" if routing == "uniform" else f"routed ({routing})"


ENSEMBLE_ROWS = [*(routing_row(routing) for routing in ROUTINGS), BEST_EXPERT_ROW]  # an ensemble's ways of use
PAPER_ROW = routing_row("paper")


class Pairs(Enum):
    """The job's sets of training pairs, by their key in `data/sources.json`. A comparison's models all train on the
    job's pairs; the growth experiment's MODE-n and its seed on those (the sources but the arriving one), the new
    experts on the arriving source's alone, and retraining from scratch on all of them."""

    JOB = "pairs"
    ARRIVING = "arriving"
    ALL = "all"


class Role(Enum):
    """What a model stands for in its experiment: the report and the stages find a model by its role."""

    SEED = auto()  # the seed CLIP, where the experts fork (the growth experiment's: without the new source)
    DENSE = auto()  # the paper's dense baseline: the seed's own schedule run to its end
    DENSE_PAIRS = auto()  # dense-n: the seed's schedule re-stretched to as many pairs as seed + n experts see
    WIDE_DENSE = auto()  # Dense, twice as wide, from random weights (the validation experiment's: capacity)
    MODE = auto()  # MODE-n: clustered in the caption encoder's space, fine then coarse, routed there
    SEED_TEXT_ROUTER = auto()  # MODE-n's experts routed in the seed CLIP's text space
    FULL = auto()  # Full-n: n forks of the seed on every pair, averaged
    ONE_STEP = auto()  # OneStep-n: clustered straight into n
    RANDOM = auto()  # Random-n: a random split
    SEED_TEXT = auto()  # SeedText-n: clustered in the seed CLIP's text space
    LORA = auto()  # LoRA-n: MODE-n with LoRA experts on the seed
    # The growth experiment's
    BEFORE_GROWING = auto()  # MODE-n, trained without the arriving source
    GROWN = auto()  # it, grown by new experts on the arriving pairs
    SHRUNK = auto()  # the grown MODE without them again
    FINE_TUNED_ON_NEW = auto()  # the seed fine-tuned on the arriving pairs alone (what a dense model forgets)
    SEED_ALL = auto()  # a seed trained on all sources
    ALL_AT_ONCE = auto()  # MODE-m on all sources from that seed: retraining, m the grown MODE's experts
    DENSE_ALL = auto()  # Dense on all sources, with MODE-m's pairs
    GROWN_LONG = auto()  # MODE-n grown by new experts trained as long as the seed


@dataclass(frozen=True)
class Clustering:
    """A clustering of the training pairs into `experts` coarse clusters, in `clusters/<name>/`."""

    name: str
    experts: int
    method: str = "two-level"  # `kmeans.METHODS`: two-level (MODE), one-step, random
    seed_text: bool = False  # in the seed CLIP's text space (SeedText-n), not the job's caption encoder's
    data: Pairs = Pairs.JOB  # which training pairs it splits


@dataclass(frozen=True, kw_only=True)
class Model:
    """A model of an experiment: its folder's name under models/ (the seed's: seed/) and results/, its role, what the
    paper calls it, and the optimizer steps of all the training that went into it (the seed's included)."""

    name: str
    role: Role
    paper_name: str
    steps: int

    @property
    def main_row(self) -> str:
        """The result row that stands for the model in the report: a CLIP's one row."""
        return CLIP_ROW


@dataclass(frozen=True, kw_only=True)
class SeedRun(Model):
    """A seed CLIP trained on `data` from `--init` or random weights, stopped at the fork (its schedule goes on)."""

    data: Pairs = Pairs.JOB


@dataclass(frozen=True, kw_only=True)
class DenseRun(Model):
    """One CLIP trained on all of `data` to step `max_steps`: forked from `fork_from` (weights, optimizer, schedule),
    or (`fork_from` None) trained as the seed was from random weights, `width_factor` times as wide."""

    max_steps: int
    fork_from: SeedRun | None
    width_factor: int = 1
    data: Pairs = Pairs.JOB


@dataclass(frozen=True, kw_only=True)
class Ensemble(Model):
    """`clustering.experts` experts forked from `fork_from` (expert k on cluster k or, with `every_pair`, each on all
    pairs in its own order), assembled into a MODE routed in the space `router` says (`assembly.ROUTERS`: auto, the
    clustering's own space, as the paper routes MODE-n; or the seed CLIP's text space)."""

    clustering: Clustering
    fork_from: SeedRun
    every_pair: bool = False  # Full-n: each fork on every pair (the clustering's routing counts for nothing)
    router: str = "auto"
    lora_rank: int | None = None  # its experts LoRA adapters of this rank on the seed

    @property
    def n(self) -> int:
        return self.clustering.experts

    @property
    def main_row(self) -> str:
        """Its paper routing; Full-n's uniform average (its routing counts for nothing)."""
        return routing_row("uniform") if self.every_pair else PAPER_ROW

    @property
    def ensemble(self) -> str:
        """The experts' name, in their folder and stages: the clustering's (`minilm-2`: two routers of MODE-2 share
        its experts), or Full-n's and LoRA-n's own (`minilm-2-lora`)."""
        if self.every_pair:
            return self.name
        return self.assembly if self.role is Role.LORA else self.clustering.name

    @property
    def assembly(self) -> str:
        """Its name in its assembly stage: `minilm-2`, `minilm-2-seedtext-router`, `full-2`."""
        return self.name.removeprefix("mode-")


@dataclass(frozen=True, kw_only=True)
class GrownMode(Model):
    """The MODE `parent` grown by `new_experts` experts on the arriving pairs (`growth.grow`), their schedule ending
    at `max_steps` (None: their siblings')."""

    parent: Ensemble
    new_experts: int
    max_steps: int | None = None

    @property
    def n(self) -> int:
        return self.parent.n + self.new_experts

    @property
    def main_row(self) -> str:
        return PAPER_ROW


@dataclass(frozen=True, kw_only=True)
class ShrunkMode(Model):
    """The grown MODE `parent` without the experts it was grown by (`growth.shrink`)."""

    parent: GrownMode

    @property
    def n(self) -> int:
        return self.parent.parent.n

    @property
    def main_row(self) -> str:
        return PAPER_ROW


def comparison(recipe: Recipe) -> list[Model]:
    """The models of the comparison, in the report's order: the seed, the dense baselines, MODE-n, then the paper's
    controls and ablations."""
    fork, per_expert = recipe.seed_steps, recipe.expert_steps
    seed = SeedRun(name="seed", role=Role.SEED, paper_name="Seed (fork point)", steps=fork)
    minilm = {n: Clustering(f"minilm-{n}", n) for n in recipe.experts}

    def ensemble(clustering: Clustering, role: Role, paper_name: str, **fields) -> Ensemble:
        name = fields.pop("name", f"mode-{clustering.name}")
        fields.setdefault("lora_rank", None if recipe.lora_experts else recipe.lora_rank)  # all LoRA, or LoRA-n
        return Ensemble(name=name, role=role, paper_name=paper_name, steps=fork + clustering.experts * per_expert,
                        clustering=clustering, fork_from=seed, **fields)  # fmt: skip

    models: list[Model] = [
        seed,
        # The paper's dense baseline: the seed's own schedule run to its end on all pairs.
        DenseRun(
            name="dense",
            role=Role.DENSE,
            paper_name="Dense",
            steps=recipe.total_steps,
            max_steps=recipe.total_steps,
            fork_from=seed,
        ),  # fmt: skip
    ]
    for n in sorted(recipe.experts):  # the seed's schedule re-stretched to as many pairs as seed + n experts see
        steps = fork + n * per_expert
        models.append(DenseRun(name=f"dense-{n}", role=Role.DENSE_PAIRS, paper_name=f"Dense, MODE-{n}'s pairs",
                               steps=steps, max_steps=steps, fork_from=seed))  # fmt: skip
    models += [ensemble(minilm[n], Role.MODE, f"MODE-{n}") for n in sorted(recipe.experts)]
    models += [  # the same experts, routed in the seed CLIP's text space instead
        ensemble(minilm[n], Role.SEED_TEXT_ROUTER, f"MODE-{n}, seed-text router",
                 name=f"mode-minilm-{n}-seedtext-router", router="seed-text")
        for n in sorted(recipe.experts)
    ]  # fmt: skip
    models += [  # MODE-n's clustering and router, its experts LoRA adapters on the seed
        ensemble(minilm[n], Role.LORA, f"MODE-{n}, LoRA experts", name=f"mode-minilm-{n}-lora",
                 lora_rank=recipe.lora_rank)
        for n in sorted(recipe.lora_experts)
    ]  # fmt: skip
    models += [  # n forks of the seed on all pairs, averaged: read in its uniform row
        ensemble(minilm[n], Role.FULL, f"Full-{n}", name=f"full-{n}", every_pair=True)
        for n in sorted(recipe.full_experts)
    ]
    models += [
        ensemble(Clustering(f"onestep-{n}", n, "one-step"), Role.ONE_STEP, f"OneStep-{n}")
        for n in sorted(recipe.onestep_experts)
    ]
    if n := recipe.random_experts:
        models.append(ensemble(Clustering(f"random-{n}", n, "random"), Role.RANDOM, f"Random-{n}"))
    models += [
        ensemble(Clustering(f"seedtext-{n}", n, seed_text=True), Role.SEED_TEXT, f"SeedText-{n}")
        for n in sorted(recipe.seedtext_experts)
    ]
    return models


def growth_comparison(recipe: Recipe) -> list[Model]:
    """The growth experiment's models, in the report's order: MODE-n trained without the arriving source's pairs, then
    grown by `new_experts` experts on them, then shrunk back; against retraining on all pairs (a seed, MODE-m with as
    many experts as the grown one, and Dense with MODE-m's pairs) and the seed fine-tuned on the arriving pairs alone,
    for as many steps as the new experts took (what a dense model forgets)."""
    fork, per_expert, added = recipe.seed_steps, recipe.expert_steps, recipe.new_experts
    n = recipe.experts[0]
    m, new_steps, all_steps = n + added, fork + added * per_expert, fork + (n + added) * per_expert
    seed = SeedRun(name="seed", role=Role.SEED, paper_name="Seed, without the new source", steps=fork)
    before = Ensemble(name=f"mode-minilm-{n}", role=Role.BEFORE_GROWING, paper_name=f"MODE-{n}, before growing",
                      steps=fork + n * per_expert, clustering=Clustering(f"minilm-{n}", n),
                      fork_from=seed)  # fmt: skip
    grown = GrownMode(name=f"{before.name}-grown", role=Role.GROWN, paper_name=f"MODE-{n} grown to {m}",
                      steps=all_steps, parent=before, new_experts=added)  # fmt: skip
    shrunk = ShrunkMode(name=f"{grown.name}-shrunk", role=Role.SHRUNK, paper_name=f"MODE-{m} shrunk back to {n}",
                        steps=all_steps, parent=grown)  # fmt: skip
    # The fork's schedule ends soon after it (the paper's 5 of 32 epochs): little for data the seed never saw. The same
    # new experts on a schedule stretched to twice the fork, so that they train as many steps as the seed did.
    grown_long = GrownMode(name=f"{grown.name}-long", role=Role.GROWN_LONG,
                           paper_name=f"MODE-{n} grown to {m}, new experts as long as the seed",
                           steps=before.steps + added * fork, parent=before, new_experts=added,
                           max_steps=2 * fork)  # fmt: skip
    forgetting = DenseRun(name="dense-new", role=Role.FINE_TUNED_ON_NEW,
                          paper_name="Seed fine-tuned on the new source alone", steps=new_steps, max_steps=new_steps,
                          fork_from=seed, data=Pairs.ARRIVING)  # fmt: skip
    seed_all = SeedRun(name="seed-all", role=Role.SEED_ALL, paper_name="Seed, all sources", steps=fork, data=Pairs.ALL)
    at_once = Ensemble(name=f"mode-all-minilm-{m}", role=Role.ALL_AT_ONCE,
                       paper_name=f"MODE-{m}, all sources at once", steps=all_steps,
                       clustering=Clustering(f"all-minilm-{m}", m, data=Pairs.ALL), fork_from=seed_all)  # fmt: skip
    dense_all = DenseRun(name=f"dense-all-{m}", role=Role.DENSE_ALL,
                         paper_name=f"Dense, all sources, MODE-{m}'s pairs", steps=all_steps, max_steps=all_steps,
                         fork_from=seed_all, data=Pairs.ALL)  # fmt: skip
    return [seed, before, grown, shrunk, forgetting, seed_all, at_once, dense_all, grown_long]


def validation_models(recipe: Recipe, wide: bool = True) -> list[Model]:
    """The models that say, on validation pairs only, whether the recipe is in the paper's regime: the seed, the dense
    runs (does training on after the fork still pay?) and, with `wide` (a seed from random weights), a dense CLIP
    twice as wide trained the same way (does capacity bind?)."""
    models = [model for model in comparison(recipe) if isinstance(model, (SeedRun, DenseRun))]
    total = recipe.total_steps
    wider = DenseRun(name="dense-wide", role=Role.WIDE_DENSE, paper_name="Dense, twice as wide", steps=total,
                     max_steps=total, fork_from=None, width_factor=2)  # fmt: skip
    return models + wide * [wider]


def result_rows(results: dict) -> dict[str, dict]:
    """{report row: metrics} of one evaluation's results (`evaluation.zero_shot_classification`, `retrieval`): a CLIP's
    one row, or an ensemble's routings and its best single expert on this task (by the first metric)."""
    by_name = results["results"]
    if CLIP_NAME in by_name:
        return {CLIP_ROW: by_name[CLIP_NAME]}
    experts = [metrics for name, metrics in by_name.items() if re.fullmatch(EXPERT_NAME.format(k=r"\d+"), name)]
    rows = {routing_row(routing): by_name[ensemble_name(routing)] for routing in ROUTINGS}
    return rows | {BEST_EXPERT_ROW: max(experts, key=lambda metrics: next(iter(metrics.values())))}


def ensemble_name(routing: str = "paper") -> str:
    """The name an ensemble routed by `routing` goes by in the evaluations' results."""
    return MODE_NAME.format(routing=routing)


def routing_weights(results: dict, routing: str = "paper") -> list[float]:
    """The expert weights an ensemble's routing gave a zero-shot task."""
    return results["routing_weights"][ensemble_name(routing)]


# ----------------------------------------------------------------------------------------------- the folders

DATA_STAGE, CURVE_STAGE = "data", "curve"
RETRIEVAL_RESULTS, ROUTING_RESULTS = "retrieval.json", "routing.json"  # each model's, in results/<model>/


def zeroshot_results_name(task: str) -> str:
    """A model's results on the zero-shot task `task`, in results/<model>/."""
    return f"zeroshot-{task}.json"


@dataclass(frozen=True)
class Replicate:
    """`OUTPUT/seed-<s>/`: the experiment run again for training seed s, the `--seed` of its every training and
    clustering (data order, initial weights, clustering): the report's statistics are over replicates."""

    path: Path
    training_seed: int

    @property
    def seed_run(self) -> Path:
        """The seed CLIP's run."""
        return self.path / "seed"

    def model(self, model: Model) -> Path:
        """A model's folder: the seed CLIP's run (seed/), or its folder under models/ (another seed run's too)."""
        return self.seed_run if model.role is Role.SEED else self.path / "models" / model.name

    def fork(self, recipe: Recipe, seed_run: SeedRun) -> Path:
        """The checkpoint of `seed_run` that the models forking from it start from."""
        return self.model(seed_run) / "checkpoints" / f"step_{recipe.seed_steps}"

    def clusters(self, clustering: Clustering) -> Path:
        return self.path / "clusters" / clustering.name

    def clustering_report(self, clustering: Clustering) -> Path:
        """A clustering run's report (its coarse clusters' sizes), written last."""
        return self.clusters(clustering) / CLUSTERS_JSON

    def labelled_pairs(self, clustering: Clustering) -> Path:
        """A clustering's labelled copy of its pairs: the experts' training data (`coarse_id`), and, on the offline
        corpus, where each source went (`source`)."""
        return self.clusters(clustering) / LABELLED_COPY

    def expert(self, model: Ensemble, k: int) -> Path:
        return self.path / "experts" / model.ensemble / f"expert-{k}"

    def grow_work(self, model: GrownMode | ShrunkMode) -> Path:
        """A grown MODE's steps' outputs (its clustering and new experts: `growth.grow`'s --work-dir); a shrunk one's
        MODEs on the way back (`shrink_step`)."""
        return self.path / "grow-work" / model.name

    def shrink_step(self, model: ShrunkMode, expert: int) -> Path:
        """The MODE on the way from `model.parent` to `model`, without experts from the last down to `expert`."""
        return self.grow_work(model) / f"without-{expert}"

    def results(self, model: Model) -> Path:
        return self.path / "results" / model.name

    def zeroshot_results(self, model: Model, task: str) -> Path:
        return self.results(model) / zeroshot_results_name(task)

    def retrieval_results(self, model: Model) -> Path:
        return self.results(model) / RETRIEVAL_RESULTS

    def routing_results(self, model: Model) -> Path:
        """A routed ensemble's routing under other prompt templates (`routing_probe`)."""
        return self.results(model) / ROUTING_RESULTS

    @property
    def curve(self) -> Path:
        return self.path / "seed_curve.json"

    def stage(self, name: str) -> str:
        """A stage's name in the job: `seed-<s>/<name>` (its time in `timings.json`, its log `logs/<name>.log`)."""
        return f"{self.path.name}/{name}"


@dataclass(frozen=True)
class JobFolder:
    """`OUTPUT/`: the job's records, its data, one `Replicate` per training seed, and the report."""

    path: Path

    recipe = property(lambda self: self.path / "recipe.json")
    timings = property(lambda self: self.path / "timings.json")
    clip_config = property(lambda self: self.path / "clip_config.json")
    wide_clip_config = property(lambda self: self.path / "clip_config_wide.json")  # `validation_models`' wide dense
    report = property(lambda self: self.path / "report.md")
    validation_report = property(lambda self: self.path / "validation.md")  # `--validation-only`'s report
    # The reports' plots, beside them
    curve_plot = property(lambda self: self.path / "seed_curve.png")
    cluster_sizes_plot = property(lambda self: self.path / "cluster_sizes.png")
    routing_weights_plot = property(lambda self: self.path / "routing_weights.png")
    accuracy_plot = property(lambda self: self.path / "accuracy.png")
    data = property(lambda self: self.path / "data")
    sources = property(lambda self: self.path / "data" / "sources.json")
    offline_pairs = property(lambda self: self.path / "data" / "pairs")
    offline_classification = property(lambda self: self.path / "data" / "eval")
    offline_retrieval = property(lambda self: self.path / "data" / "retrieval")
    offline_arriving_pairs = property(lambda self: self.path / "data" / "arriving-pairs")  # a growth recipe's
    offline_all_pairs = property(lambda self: self.path / "data" / "all-pairs")

    def offline(self, pairs: Pairs) -> Path:
        """Where the offline corpus's training pairs `pairs` are."""
        return {Pairs.JOB: self.offline_pairs, Pairs.ARRIVING: self.offline_arriving_pairs,
                Pairs.ALL: self.offline_all_pairs}[pairs]  # fmt: skip

    def offline_classification_set(self, task: str) -> Path:
        """The offline corpus's zero-shot set of the source `task`."""
        return self.offline_classification / task

    def replicate(self, training_seed: int) -> Replicate:
        return Replicate(self.path / f"seed-{training_seed}", training_seed)

    def replicates(self, recipe: Recipe) -> list[Replicate]:
        """The job's replicates, one per training seed. Another training seed's folder (an earlier run's, with more
        seeds) is not this job's experiment."""
        return [self.replicate(training_seed) for training_seed in recipe.training_seeds]

    def every_replicate(self, recipe: Recipe) -> list[Replicate]:
        """The job's replicates and any other here (an earlier run's, with more training seeds): whose stages
        `timings.json` may hold."""
        present = {int(path.name.removeprefix("seed-")) for path in self.path.glob("seed-*") if
                   re.fullmatch(r"seed-\d+", path.name)}  # fmt: skip
        return [self.replicate(training_seed) for training_seed in sorted(present | set(recipe.training_seeds))]

    def results_named(self, name: str) -> list[Path]:
        """Every finished result file called `name` (`zeroshot_results_name`, ...) of every model of every replicate
        here."""
        return sorted(self.path.glob(f"seed-*/results/*/{name}"))

    def log(self, stage: str) -> Path:
        """A stage's log: `logs/<name>.log`; a training seed's stage `FOLDER/NAME`'s: `FOLDER/logs/NAME.log`."""
        folder, _, name = stage.rpartition("/")
        return self.path / folder / "logs" / f"{name}.log"
