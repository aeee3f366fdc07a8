"""The job's data stage: build what the sources leave to the offline corpus (real images that install without the
Hub, `lib.corpus`), and write `data/sources.json` (`JobSets`), where every set the later stages read is."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..lib.core.files import read_json, write_json
from .arguments import Sources
from .layout import JobFolder, Pairs
from .recipes import Recipe

# ----------------------------------------------------------------------------------------------- data/sources.json


@dataclass(frozen=True)
class TrainingPairs:
    """A set of training pairs: a dataset (a Hub id or a path) and its split."""

    dataset: str
    split: str


@dataclass(frozen=True)
class ZeroShotSet:
    """A held-out zero-shot task: a class-labelled dataset, and its own prompt templates and class names when the
    sources name them (`--templates`, `--classnames`: a JSON file or a named set)."""

    dataset: str
    split: str
    templates: str | None = None
    classnames: str | None = None

    def to_json(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class RetrievalSet:
    """The held-out image-caption pairs of retrieval."""

    dataset: str
    split: str
    caption_column: str


@dataclass(frozen=True)
class HeldOutSets:
    """What the evaluations read, and nothing else does: a job may resume with them corrected."""

    zeroshot: dict[str, ZeroShotSet]
    retrieval: RetrievalSet


@dataclass(frozen=True)
class JobSets:
    """`data/sources.json`: the training pairs (`Pairs`: the job's, and the growth experiment's others) and the
    held-out sets; its JSON is {"pairs", "arriving", "all" (those there are), "zeroshot", "retrieval"}."""

    training: dict[Pairs, TrainingPairs]
    held_out: HeldOutSets

    def to_json(self) -> dict:
        training = {pairs.value: dataclasses.asdict(self.training[pairs]) for pairs in Pairs if pairs in self.training}
        zeroshot = {task: held_out.to_json() for task, held_out in self.held_out.zeroshot.items()}
        return {**training, "zeroshot": zeroshot, "retrieval": dataclasses.asdict(self.held_out.retrieval)}

    @classmethod
    def from_json(cls, record: dict) -> "JobSets":
        training = {pairs: TrainingPairs(**record[pairs.value]) for pairs in Pairs if pairs.value in record}
        zeroshot = {task: ZeroShotSet(**held_out) for task, held_out in record["zeroshot"].items()}
        return cls(training, HeldOutSets(zeroshot, RetrievalSet(**record["retrieval"])))


def read_sets(folder: JobFolder) -> JobSets:
    return JobSets.from_json(read_json(folder.sources))


def write_sets(folder: JobFolder, sets: JobSets) -> None:
    write_json(folder.sources, sets.to_json())


# ----------------------------------------------------------------------------------------------- the data stage


def prepare_data(folder: JobFolder, experiment, sources: Sources) -> None:
    """Build the `experiment`'s training pairs (`experiments.Experiment`) and the held-out sets the sources leave to
    the offline corpus, then name them all in sources.json."""
    experiment.build_pairs(folder, sources)
    held_out = held_out_sets(folder, experiment.recipe, sources)
    write_sets(folder, JobSets(experiment.training_sets(folder, sources), held_out))


def held_out_sets(
    folder: JobFolder, recipe: Recipe, sources: Sources, earlier: HeldOutSets | None = None
) -> HeldOutSets:
    """The sets `sources` name, else the offline corpus's, built here unless `earlier` (those of an earlier data
    stage) lists them already."""
    zeroshot = {task: ZeroShotSet(dataset, split) for task, (dataset, split) in sources.zeroshot.items()}
    built = earlier and all(
        Path(held_out.dataset).parent == folder.offline_classification for held_out in earlier.zeroshot.values()
    )
    if not zeroshot and built:
        zeroshot = {task: ZeroShotSet(held_out.dataset, held_out.split) for task, held_out in earlier.zeroshot.items()}
    elif not zeroshot:
        zeroshot = build_offline_classification_sets(recipe, folder)
    zeroshot = {task: dataclasses.replace(held_out, templates=sources.templates.get(task),
                                          classnames=sources.classnames.get(task))
                for task, held_out in zeroshot.items()}  # fmt: skip
    if sources.retrieval:
        dataset, split = sources.retrieval
        retrieval = RetrievalSet(dataset, split, sources.caption_column)
    elif earlier and earlier.retrieval.dataset == str(folder.offline_retrieval):
        retrieval = earlier.retrieval
    else:
        retrieval = build_offline_retrieval_set(recipe, folder.offline_retrieval)
    return HeldOutSets(zeroshot, retrieval)


def refresh_held_out_sets(folder: JobFolder, recipe: Recipe, sources: Sources) -> None:
    """A job resumed with corrected held-out sets (`main.record_settings` let it): sources.json names them from now
    on; its training pairs stay as the data stage wrote them."""
    if not folder.sources.is_file():
        return  # the data stage has not run: it will write them
    recorded = read_json(folder.sources)
    earlier = JobSets.from_json(recorded)
    updated = dataclasses.replace(earlier, held_out=held_out_sets(folder, recipe, sources, earlier.held_out))
    if updated.to_json() != recorded:
        write_sets(folder, updated)


def training_pairs(folder: JobFolder, sources: Sources) -> str:
    """The dataset every training and clustering stage reads: the user's, or the offline corpus's pairs."""
    return str(sources.dataset or folder.offline_pairs)


def build_offline_pairs(recipe: Recipe, path) -> None:
    from ..lib.data.offline_corpus import SOURCES, caption_pairs

    train = [load(split="train", count=recipe.train_per_source, seed=recipe.seed) for load in SOURCES.values()]
    caption_pairs(train, recipe.caption_noise, recipe.seed, recipe.caption_attributes).save_to_disk(path)


def build_growth_pairs(recipe: Recipe, folder: JobFolder) -> None:
    """The growth experiment's pairs: the job's of every source but the arriving one, the arriving pairs of that one
    alone (each with its own caption noise), and all pairs, the two together: what retraining from scratch would
    train on."""
    import datasets

    from ..lib.data.offline_corpus import SOURCES, caption_pairs

    def pairs_of(names: list[str]) -> datasets.Dataset:
        train = [SOURCES[name](split="train", count=recipe.train_per_source, seed=recipe.seed) for name in names]
        return caption_pairs(train, recipe.caption_noise, recipe.seed, recipe.caption_attributes)

    old = pairs_of([name for name in SOURCES if name != recipe.arriving_source])
    arriving = pairs_of([recipe.arriving_source])
    old.save_to_disk(folder.offline(Pairs.JOB))
    arriving.save_to_disk(folder.offline(Pairs.ARRIVING))
    datasets.concatenate_datasets([old, arriving]).save_to_disk(folder.offline(Pairs.ALL))


def build_offline_classification_sets(recipe: Recipe, folder: JobFolder) -> dict[str, ZeroShotSet]:
    """One zero-shot set per source: a sample of its test split, each saved with `save_to_disk`."""
    from ..lib.data.offline_corpus import SOURCES, classification_set

    sets = {}
    for name, load in SOURCES.items():
        data = load(split="test", seed=recipe.seed)
        count = min(recipe.test_per_source, len(data.labels))
        path = folder.offline_classification_set(name)
        classification_set(data).shuffle(seed=recipe.seed).select(range(count)).save_to_disk(path)
        sets[name] = ZeroShotSet(str(path), "test")
    return sets


def build_offline_retrieval_set(recipe: Recipe, path) -> RetrievalSet:
    from ..lib.data.offline_corpus import SOURCES, retrieval_set

    images = [load(split="test", count=recipe.retrieval_per_source, seed=recipe.seed + 1) for load in SOURCES.values()]
    retrieval_set(images, recipe.seed, recipe.caption_attributes).save_to_disk(path)
    return RetrievalSet(str(path), "test", "caption")


def count_pairs(sources: Sources, offline: int) -> int:
    """How many training pairs the job will have: the user's dataset's rows, or `offline`, the offline corpus's."""
    if sources.dataset is None:
        return offline
    from ..lib.data.pairs import load_pairs

    return len(load_pairs(sources.dataset, sources.split))
