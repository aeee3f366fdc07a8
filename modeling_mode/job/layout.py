"""The main job's folder: the one place that knows the name of every folder, stage, model and result row in it, and
when each output is finished.

    OUTPUT/
        recipe.json  timings.json  clip_config.json  report.md (with its PNG plots)
        data/        sources.json, and the offline corpus's sets: pairs/, eval/<task>/, retrieval/
        seed-<s>/    one training seed's whole comparison:
            seed/                           the seed CLIP run; the experts fork at checkpoints/step_<seed_steps>
            clusters/<clustering>/          a clustering run
            experts/<ensemble>/expert-<k>/  an ensemble's expert runs
            models/<model>/                 the dense runs and the assembled ensembles
            results/<model>/                zeroshot-<task>.json and retrieval.json
            seed_curve.json                 the fork-point curve
            logs/<stage>.log

The comparison is a list of `Model` specs (`comparison`): the stages are built by iterating over it, and the report
reads its names, rows and costs from it. Adding a baseline is adding a spec; adding a routing, an entry of
`ROUTINGS` in the model's configuration.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..configuration_mode_clip import ROUTINGS
from ..lib.clustering.outputs import is_finished_run
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


# ----------------------------------------------------------------------------------------------- the comparison

CLIP_ROW = ""  # a CLIP model's one row: itself
BEST_EXPERT_ROW = "best expert"


def routing_row(routing: str) -> str:
    """The report's row of an ensemble routed by `routing` (`ROUTINGS`): 'routed (paper)', ..., 'uniform'."""
    return "uniform" if routing == "uniform" else f"routed ({routing})"


ENSEMBLE_ROWS = [*(routing_row(routing) for routing in ROUTINGS), BEST_EXPERT_ROW]  # an ensemble's ways of use
PAPER_ROW = routing_row("paper")


# The job's sets of training pairs, by name: a comparison's models all train on "pairs"; the growth experiment's
# MODE-n and its seed on "pairs" (the sources but the arriving one), the new experts on "arriving" (that source's
# alone), and retraining from scratch on "all" (the two together).
DATA = ("pairs", "arriving", "all")


@dataclass(frozen=True)
class Clustering:
    """A clustering of the training pairs into `experts` coarse clusters, in `clusters/<name>/`."""

    name: str
    experts: int
    method: str = "two-level"  # `kmeans.METHODS`: two-level (MODE), one-step, random
    seed_text: bool = False  # in the seed CLIP's text space (SeedText-n), not the job's caption encoder's
    data: str = "pairs"  # which training pairs it splits (`DATA`)


@dataclass(frozen=True)
class Model:
    """One model of the comparison: how it is made, what the paper calls it, the result row that stands for it, and
    the optimizer steps of all the training that went into it (the seed's included).

    kind 'seed': a seed run; 'dense': one CLIP forked from the seed and trained on all pairs to step
    `max_steps` (with `width_factor` > 1: a wider CLIP trained the same way from random weights); 'ensemble':
    `clustering.experts` experts forked from the seed (expert k on cluster k, or with `every_pair` on all pairs, each
    in its own order), assembled into a MODE routed in the space `router` says (`assembly.ROUTERS`: the clustering
    encoder's, as the paper routes, or the seed CLIP's text space); 'grow': the MODE `parent` grown by new experts on
    the arriving pairs (`growth.grow`; with `max_steps`, their schedule's end); 'shrink': `parent` without the experts
    it was grown by (`growth.shrink`)."""

    name: str  # its folder under models/ (the seed: seed/) and results/
    kind: str
    paper_name: str
    main_row: str
    steps: int
    n: int | None = None
    max_steps: int | None = None  # a dense run's schedule end; a grown MODE's new experts' (None: their siblings')
    clustering: Clustering | None = None  # an ensemble's: its experts' clusters and its routing's centres
    every_pair: bool = False  # Full-n: each fork on every pair (the clustering's routing counts for nothing)
    router: str = "auto"  # `assembly.ROUTERS`; auto: the clustering's own space (the paper's router for MiniLM's)
    width_factor: int = 1  # a dense run this many times as wide as the recipe's model, from random weights
    data: str = "pairs"  # a seed's or dense run's training pairs (`DATA`)
    fork_from: str = "seed"  # the seed run (a model of kind 'seed') it forks from
    parent: str | None = None  # a grown or shrunk MODE's: the model it changes

    @property
    def ensemble(self) -> str:
        """An ensemble's experts' name, in their folder and stages: its clustering's (`minilm-2`: two routers of
        MODE-2 share its experts), or Full-n's own."""
        return self.name if self.every_pair else self.clustering.name

    @property
    def assembly(self) -> str:
        """An ensemble's name in its assembly stage: `minilm-2`, `minilm-2-seedtext-router`, `full-2`."""
        return self.name.removeprefix("mode-")


def comparison(recipe: Recipe) -> list[Model]:
    """The models of one training seed's comparison, in the report's order: the seed, the dense baselines, MODE-n,
    then the paper's controls and ablations (a growth recipe's: `growth_comparison`)."""
    if recipe.arriving_source is not None:
        return growth_comparison(recipe)
    fork, per_expert = recipe.seed_steps, recipe.expert_steps
    minilm = {n: Clustering(f"minilm-{n}", n) for n in recipe.experts}

    def ensemble(clustering: Clustering, paper_name: str, n: int) -> Model:
        return Model(f"mode-{clustering.name}", "ensemble", paper_name, PAPER_ROW, fork + n * per_expert, n,
                     clustering=clustering)  # fmt: skip

    models = [
        Model("seed", "seed", "Seed (fork point)", CLIP_ROW, fork),
        # The paper's dense baseline: the seed's own schedule run to its end on all pairs.
        Model("dense", "dense", "Dense", CLIP_ROW, recipe.total_steps, max_steps=recipe.total_steps),
    ]
    for n in sorted(recipe.experts):  # the seed's schedule re-stretched to as many pairs as seed + n experts see
        steps = fork + n * per_expert
        models.append(Model(f"dense-{n}", "dense", f"Dense, MODE-{n}'s pairs", CLIP_ROW, steps, n, max_steps=steps))
    models += [ensemble(minilm[n], f"MODE-{n}", n) for n in sorted(recipe.experts)]
    for n in sorted(recipe.experts):  # the same experts, routed in the seed CLIP's text space instead
        name, paper_name = f"mode-minilm-{n}-seedtext-router", f"MODE-{n}, seed-text router"
        models.append(Model(name, "ensemble", paper_name, PAPER_ROW, fork + n * per_expert, n, clustering=minilm[n],
                            router="seed-text"))  # fmt: skip
    for n in sorted(recipe.full_experts):  # n forks of the seed on all pairs, averaged: read in its uniform row
        models.append(Model(f"full-{n}", "ensemble", f"Full-{n}", routing_row("uniform"), fork + n * per_expert, n,
                            clustering=minilm[n], every_pair=True))  # fmt: skip
    models += [
        ensemble(Clustering(f"onestep-{n}", n, "one-step"), f"OneStep-{n}", n) for n in sorted(recipe.onestep_experts)
    ]
    if n := recipe.random_experts:
        models.append(ensemble(Clustering(f"random-{n}", n, "random"), f"Random-{n}", n))
    models += [
        ensemble(Clustering(f"seedtext-{n}", n, seed_text=True), f"SeedText-{n}", n)
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
    before = Model(f"mode-minilm-{n}", "ensemble", f"MODE-{n}, before growing", PAPER_ROW, fork + n * per_expert, n,
                   clustering=Clustering(f"minilm-{n}", n))  # fmt: skip
    grown = Model(f"{before.name}-grown", "grow", f"MODE-{n} grown to {m}", PAPER_ROW, all_steps, m,
                  parent=before.name)  # fmt: skip
    shrunk = Model(f"{grown.name}-shrunk", "shrink", f"MODE-{m} shrunk back to {n}", PAPER_ROW, all_steps, n,
                   parent=grown.name)  # fmt: skip
    # The fork's schedule ends soon after it (the paper's 5 of 32 epochs): little for data the seed never saw. The same
    # new experts on a schedule stretched to twice the fork, so that they train as many steps as the seed did.
    grown_long = Model(f"{grown.name}-long", "grow", f"MODE-{n} grown to {m}, new experts as long as the seed",
                       PAPER_ROW, before.steps + added * fork, m, max_steps=2 * fork, parent=before.name)  # fmt: skip
    forgetting = Model("dense-new", "dense", "Seed fine-tuned on the new source alone", CLIP_ROW, new_steps,
                       max_steps=new_steps, data="arriving")  # fmt: skip
    at_once = Model(f"mode-all-minilm-{m}", "ensemble", f"MODE-{m}, all sources at once", PAPER_ROW, all_steps, m,
                    clustering=Clustering(f"all-minilm-{m}", m, data="all"), fork_from="seed-all")  # fmt: skip
    dense_all = Model(f"dense-all-{m}", "dense", f"Dense, all sources, MODE-{m}'s pairs", CLIP_ROW, all_steps,
                      max_steps=all_steps, data="all", fork_from="seed-all")  # fmt: skip
    seed = Model("seed", "seed", "Seed, without the new source", CLIP_ROW, fork)
    seed_all = Model("seed-all", "seed", "Seed, all sources", CLIP_ROW, fork, data="all")
    return [seed, before, grown, shrunk, forgetting, seed_all, at_once, dense_all, grown_long]


def validation_models(recipe: Recipe, wide: bool = True) -> list[Model]:
    """The models that say, on validation pairs only, whether the recipe is in the paper's regime: the seed, the dense
    runs (does training on after the fork still pay?) and, with `wide` (a seed from random weights), a dense CLIP
    twice as wide trained the same way (does capacity bind?)."""
    models = [model for model in comparison(recipe) if model.kind in ("seed", "dense")]
    total = recipe.total_steps
    return models + wide * [Model("dense-wide", "dense", "Dense, twice as wide", CLIP_ROW, total, max_steps=total,
                           width_factor=2)]  # fmt: skip


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
# Each stage's phase in the report's wall time, by its name's first word; the rest are evaluations.
PHASES = {"data": "data", "cluster": "clustering", "seed": "training", "expert": "training", "dense": "training",
          "assemble": "assembly", "grow": "training", "shrink": "assembly", "curve": "validation curve"}  # fmt: skip


def phase_of(stage: str) -> str:
    """'seed-0/expert-minilm-2-0' -> 'training'."""
    return PHASES.get(stage.rpartition("/")[2].split("-")[0], "evaluation")


@dataclass(frozen=True)
class SeedFolder:
    """`OUTPUT/seed-<s>/`: training seed s's comparison; s is the `--seed` of its every training and clustering."""

    path: Path
    seed: int

    @property
    def seed_run(self) -> Path:
        return self.path / "seed"

    def run(self, name: str) -> Path:
        """The folder of the model called `name`: the seed run's (`seed`), or its folder under models/."""
        return self.seed_run if name == "seed" else self.path / "models" / name

    def fork(self, recipe: Recipe, seed_run: str = "seed") -> Path:
        """The checkpoint of the seed run `seed_run` that the models forking from it start from."""
        return self.run(seed_run) / "checkpoints" / f"step_{recipe.seed_steps}"

    def clusters(self, clustering: Clustering) -> Path:
        return self.path / "clusters" / clustering.name

    def expert(self, model: Model, k: int) -> Path:
        return self.path / "experts" / model.ensemble / f"expert-{k}"

    def model(self, model: Model) -> Path:
        return self.run(model.name)

    def grow_work(self, model: Model) -> Path:
        """A grown MODE's steps' outputs (its clustering and new experts: `growth.grow`'s --work-dir)."""
        return self.path / "grow-work" / model.name

    def zeroshot_results(self, model: Model, task: str) -> Path:
        return self.path / "results" / model.name / f"zeroshot-{task}.json"

    def retrieval_results(self, model: Model) -> Path:
        return self.path / "results" / model.name / "retrieval.json"

    def routing_results(self, model: Model) -> Path:
        """A routed ensemble's routing under other prompt templates (`routing_probe`)."""
        return self.path / "results" / model.name / "routing.json"

    @property
    def curve(self) -> Path:
        return self.path / "seed_curve.json"

    def stage(self, name: str) -> str:
        """A stage's name in the job: `seed-<s>/<name>` (its time in `timings.json`, its log `logs/<name>.log`)."""
        return f"{self.path.name}/{name}"


@dataclass(frozen=True)
class JobFolder:
    """`OUTPUT/`: the job's records, its data, one `SeedFolder` per training seed, and the report."""

    path: Path

    recipe = property(lambda self: self.path / "recipe.json")
    timings = property(lambda self: self.path / "timings.json")
    clip_config = property(lambda self: self.path / "clip_config.json")
    wide_clip_config = property(lambda self: self.path / "clip_config_wide.json")  # `validation_models`' wide dense
    report = property(lambda self: self.path / "report.md")
    validation_report = property(lambda self: self.path / "validation.md")  # `--validation-only`'s report
    data = property(lambda self: self.path / "data")
    sources = property(lambda self: self.path / "data" / "sources.json")
    offline_pairs = property(lambda self: self.path / "data" / "pairs")
    offline_classification = property(lambda self: self.path / "data" / "eval")
    offline_retrieval = property(lambda self: self.path / "data" / "retrieval")
    offline_arriving_pairs = property(lambda self: self.path / "data" / "arriving-pairs")  # a growth recipe's
    offline_all_pairs = property(lambda self: self.path / "data" / "all-pairs")

    def seed(self, seed: int) -> SeedFolder:
        return SeedFolder(self.path / f"seed-{seed}", seed)

    def seeds(self, recipe: Recipe) -> list[SeedFolder]:
        """The job's training seeds' folders. A folder of another seed (an earlier run's, with more seeds) is not this
        job's comparison."""
        return [self.seed(seed) for seed in recipe.training_seeds]

    def log(self, stage: str) -> Path:
        """A stage's log: `logs/<name>.log`; a training seed's stage `FOLDER/NAME`'s: `FOLDER/logs/NAME.log`."""
        folder, _, name = stage.rpartition("/")
        return self.path / folder / "logs" / f"{name}.log"
