"""The job's three experiments, each with its models, the training pairs they train on, what it scores and its report.
`choose` picks one from the recipe and the flags, once, in `main.run`; the stages (`stages.StageGraph`) and the
requirements follow from it.

- `Comparison`: the paper's comparison (`layout.comparison`), MODE-n against the dense baselines, the controls and the
  ablations, on the job's pairs; scored on the held-out sets, with the routing probe.
- `ValidationOnly` (`--validation-only`): the seed and the dense runs alone (`layout.validation_models`), scored on
  validation pairs only: where to choose a recipe. A comparison in the same folder resumes from it.
- `Growth` (a recipe with an `arriving_source`): MODE-n trained without one of the offline corpus's sources, grown by
  experts on its pairs when they arrive, against retraining (`layout.growth_comparison`).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..lib.core.errors import InputError
from .arguments import Sources
from .data import TrainingPairs, build_growth_pairs, build_offline_pairs, count_pairs, training_pairs
from .layout import Ensemble, JobFolder, Model, Pairs, Role, comparison, growth_comparison, validation_models
from .recipes import Recipe


class Experiment(ABC):
    """What a job trains, on which pairs, what it scores and how it reports."""

    recipe: Recipe
    # What its stages are, known before the recipe is checked (its requirements are checked first):
    clusters: ClassVar[bool] = True  # it has clustering stages (faiss)
    probes_routing: ClassVar[bool] = False  # its routed ensembles' routing is probed (`probed_models`)
    scores_test_sets: ClassVar[bool] = True  # its models are evaluated on the held-out sets

    @property
    @abstractmethod
    def models(self) -> list[Model]:
        """Its models, in the report's order."""

    @property
    def probed_models(self) -> list[Ensemble]:
        """The routed ensembles whose routing on prompts the project did not write is measured (`routing_probe`)."""
        return []

    def model(self, role: Role) -> Model:
        """Its one model of `role`."""
        (model,) = (model for model in self.models if model.role is role)
        return model

    def training_sets(self, folder: JobFolder, sources: Sources) -> dict[Pairs, TrainingPairs]:
        """Where each set of pairs its models train on is (sources.json's, and the stages' datasets): the job's."""
        return {Pairs.JOB: TrainingPairs(training_pairs(folder, sources), sources.split)}

    def build_pairs(self, folder: JobFolder, sources: Sources) -> None:
        """The data stage's part: the training pairs the sources leave to the offline corpus."""
        if sources.dataset is None:
            build_offline_pairs(self.recipe, folder.offline(Pairs.JOB))

    @property
    def offline_sources(self) -> int:
        """How many of the offline corpus's sources the job's pairs are drawn from."""
        from ..lib.data.offline_corpus import SOURCES

        return len(SOURCES)

    def count_pairs(self, sources: Sources) -> int:
        """How many training pairs the job will have (the recipe is checked against it before any work)."""
        return count_pairs(sources, offline=self.offline_sources * self.recipe.train_per_source)

    @abstractmethod
    def write_report(self, folder: Path) -> Path:
        """Its report of the job's folder (which it reads alone), and where it is."""


@dataclass(frozen=True)
class Comparison(Experiment):
    """The paper's comparison, on the job's pairs."""

    recipe: Recipe
    probes_routing = True

    @property
    def models(self) -> list[Model]:
        return comparison(self.recipe)

    @property
    def probed_models(self) -> list[Ensemble]:
        """Every routed ensemble (Full-n's routing counts for nothing), or MODE-n alone, n the least of `experts`:
        the probe encodes every class in 80 templates, the costliest evaluation of a small job."""
        routed = [model for model in self.models if isinstance(model, Ensemble) and not model.every_pair]
        if self.recipe.probe_every_ensemble:
            return routed
        return [min((model for model in routed if model.role is Role.MODE), key=lambda model: model.n)]

    def write_report(self, folder: Path) -> Path:
        from .report import write_report  # the report reads the experiments

        return write_report(folder)


@dataclass(frozen=True)
class ValidationOnly(Comparison):
    """The comparison's seed and dense runs, and with `wide` a dense CLIP twice as wide from random weights."""

    wide: bool = True
    clusters = probes_routing = scores_test_sets = False

    @classmethod
    def for_sources(cls, recipe: Recipe, sources: Sources) -> "ValidationOnly":
        """Capacity is asked about (the wide run) when the seed starts from random weights, as the wide run does."""
        return cls(recipe, wide=sources.init is None)

    @property
    def models(self) -> list[Model]:
        return validation_models(self.recipe, self.wide)

    @property
    def probed_models(self) -> list[Ensemble]:
        return []

    def write_report(self, folder: Path) -> Path:
        from .report import write_validation_report

        return write_validation_report(folder)


@dataclass(frozen=True)
class Growth(Experiment):
    """Its pairs are the offline corpus's: the job's hold the arriving source back, the arriving pairs are that
    source's alone, and all pairs are the two together."""

    recipe: Recipe

    @property
    def models(self) -> list[Model]:
        return growth_comparison(self.recipe)

    def training_sets(self, folder: JobFolder, sources: Sources) -> dict[Pairs, TrainingPairs]:
        others = {pairs: TrainingPairs(str(folder.offline(pairs)), "train") for pairs in (Pairs.ARRIVING, Pairs.ALL)}
        return super().training_sets(folder, sources) | others

    def build_pairs(self, folder: JobFolder, sources: Sources) -> None:
        build_growth_pairs(self.recipe, folder)

    @property
    def offline_sources(self) -> int:
        return super().offline_sources - 1  # the arriving one is held back

    def write_report(self, folder: Path) -> Path:
        from .growth_report import write_growth_report  # the report reads the experiments

        return write_growth_report(folder)


def choose(name: str, recipe: Recipe, sources: Sources, validation_only: bool) -> Experiment:
    """The job's experiment: the growth experiment for a recipe with an arriving source (on the offline corpus, in
    full), else the comparison, or with `validation_only` its seed and dense runs alone."""
    if recipe.arriving_source is None:
        return ValidationOnly.for_sources(recipe, sources) if validation_only else Comparison(recipe)
    if sources.dataset is not None or validation_only:
        raise InputError(
            f"recipe {name} holds {recipe.arriving_source}'s pairs back from the offline corpus and grows its MODE by "
            "them: it runs on the offline corpus, without --dataset or --validation-only (its schedule is the "
            "converged recipe's, placed so). Grow a MODE of your own data with train/grow.py."
        )
    return Growth(recipe)
