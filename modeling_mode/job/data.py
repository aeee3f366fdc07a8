"""The job's data stage: build what the sources leave to the offline corpus (real images that install without the
Hub, `lib.corpus`), and write `data/sources.json`, where every set the later stages read is."""

from pathlib import Path

from ..lib.core.files import read_json, write_json
from .arguments import Sources
from .layout import JobFolder
from .recipes import Recipe


def prepare_data(folder: JobFolder, recipe: Recipe, sources: Sources) -> None:
    growth = {}
    if sources.dataset is None and recipe.arriving_source is not None:
        growth = build_growth_pairs(recipe, folder)
    elif sources.dataset is None:
        build_offline_pairs(recipe, folder.offline_pairs)
    pairs = {"dataset": training_pairs(folder, sources), "split": sources.split}
    write_json(folder.sources, {"pairs": pairs, **growth, **held_out_sets(folder, recipe, sources)})


def held_out_sets(folder: JobFolder, recipe: Recipe, sources: Sources, earlier: dict | None = None) -> dict:
    """sources.json's `zeroshot` and `retrieval`: the sets `sources` name, else the offline corpus's, built here
    unless `earlier` (the sources.json of an earlier data stage) lists them already."""
    zeroshot = {task: {"dataset": dataset, "split": split} for task, (dataset, split) in sources.zeroshot.items()}
    built = earlier and all(
        Path(held_out["dataset"]).parent == folder.offline_classification for held_out in earlier["zeroshot"].values()
    )
    if not zeroshot and built:
        zeroshot = {task: {key: held_out[key] for key in ("dataset", "split")}
                    for task, held_out in earlier["zeroshot"].items()}  # fmt: skip
    elif not zeroshot:
        zeroshot = build_offline_classification_sets(recipe, folder.offline_classification)
    for key, per_task in (("templates", sources.templates), ("classnames", sources.classnames)):
        for task, value in per_task.items():
            zeroshot[task][key] = value
    if sources.retrieval:
        dataset, split = sources.retrieval
        retrieval = {"dataset": dataset, "split": split, "caption_column": sources.caption_column}
    elif earlier and earlier["retrieval"]["dataset"] == str(folder.offline_retrieval):
        retrieval = earlier["retrieval"]
    else:
        retrieval = build_offline_retrieval_set(recipe, folder.offline_retrieval)
    return {"zeroshot": zeroshot, "retrieval": retrieval}


def refresh_held_out_sets(folder: JobFolder, recipe: Recipe, sources: Sources) -> None:
    """A job resumed with corrected held-out sets (`main.record_settings` let it): sources.json names them from now
    on; its training pairs stay as the data stage wrote them."""
    if not folder.sources.is_file():
        return  # the data stage has not run: it will write them
    earlier = read_json(folder.sources)
    updated = {**earlier, **held_out_sets(folder, recipe, sources, earlier)}
    if updated != earlier:
        write_json(folder.sources, updated)


def training_pairs(folder: JobFolder, sources: Sources) -> str:
    """The dataset every training and clustering stage reads: the user's, or the offline corpus's pairs."""
    return str(sources.dataset or folder.offline_pairs)


def build_offline_pairs(recipe: Recipe, path) -> None:
    from ..lib.data.offline_corpus import SOURCES, caption_pairs

    train = [load(split="train", count=recipe.train_per_source, seed=recipe.seed) for load in SOURCES.values()]
    caption_pairs(train, recipe.caption_noise, recipe.seed, recipe.caption_attributes).save_to_disk(path)


def build_growth_pairs(recipe: Recipe, folder: JobFolder) -> dict:
    """The growth experiment's pairs: `pairs` of every source but the arriving one, `arriving` of that one alone (each
    with its own caption noise), and `all`, the two together: what retraining from scratch would train on."""
    import datasets

    from ..lib.data.offline_corpus import SOURCES, caption_pairs

    def pairs_of(names: list[str]) -> datasets.Dataset:
        train = [SOURCES[name](split="train", count=recipe.train_per_source, seed=recipe.seed) for name in names]
        return caption_pairs(train, recipe.caption_noise, recipe.seed, recipe.caption_attributes)

    old = pairs_of([name for name in SOURCES if name != recipe.arriving_source])
    arriving = pairs_of([recipe.arriving_source])
    old.save_to_disk(folder.offline_pairs)
    arriving.save_to_disk(folder.offline_arriving_pairs)
    datasets.concatenate_datasets([old, arriving]).save_to_disk(folder.offline_all_pairs)
    return {name: {"dataset": str(path), "split": "train"} for name, path in
            [("arriving", folder.offline_arriving_pairs), ("all", folder.offline_all_pairs)]}  # fmt: skip


def build_offline_classification_sets(recipe: Recipe, folder) -> dict:
    """One zero-shot set per source: a sample of its test split, each saved with `save_to_disk`."""
    from ..lib.data.offline_corpus import SOURCES, classification_set

    sets = {}
    for name, load in SOURCES.items():
        data = load(split="test", seed=recipe.seed)
        count = min(recipe.test_per_source, len(data.labels))
        classification_set(data).shuffle(seed=recipe.seed).select(range(count)).save_to_disk(folder / name)
        sets[name] = {"dataset": str(folder / name), "split": "test"}
    return sets


def build_offline_retrieval_set(recipe: Recipe, path) -> dict:
    from ..lib.data.offline_corpus import SOURCES, retrieval_set

    images = [load(split="test", count=recipe.retrieval_per_source, seed=recipe.seed + 1) for load in SOURCES.values()]
    retrieval_set(images, recipe.seed, recipe.caption_attributes).save_to_disk(path)
    return {"dataset": str(path), "split": "test", "caption_column": "caption"}


def count_pairs(recipe: Recipe, sources: Sources) -> int:
    """How many training pairs the job will have: the user's dataset's rows, or the offline corpus's."""
    if sources.dataset is None:
        from ..lib.data.offline_corpus import SOURCES

        return (len(SOURCES) - (recipe.arriving_source is not None)) * recipe.train_per_source
    from ..lib.data.pairs import load_pairs

    return len(load_pairs(sources.dataset, sources.split))
