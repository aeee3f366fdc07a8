"""The fork-point curve: how far the seed CLIP has converged where its experts fork.

Validation pairs are drawn from the offline corpus's sources' train splits, none of them a training pair (the test
splits stay the held-out test sets, on which no schedule is chosen). Each checkpoint of the seed run and of the dense
run (the seed's schedule run to its end) is scored on them: the mean contrastive loss over fixed batches, and zero-shot
top-1 per source on the validation images. `write_curve` writes the points to `seed-<s>/seed_curve.json`.
"""

import logging
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lib.core.files import read_json, write_json
from ..lib.data.offline_corpus import SOURCES, LabelledImages, caption_pairs, pick_indices
from ..lib.evaluation.scoring import (
    classification_metrics,
    encode_images,
    encode_texts,
    prompt_templates,
    zero_shot_classifier,
)
from ..lib.training.checkpoints import list_checkpoints
from ..lib.training.loss import contrastive_loss
from ..lib.training.start import Start, load_start
from .recipes import Recipe

logger = logging.getLogger(__name__)

IMAGE_BATCH = 64


def held_out_indices(total: int, train_count: int, count: int, draw_seed: int) -> list[int]:
    """`count` indices of a split of `total` images (fewer when fewer are left) that the training draw did not take.

    The offline corpus's training pairs are each source's images at `corpus.pick_indices(total, train_count,
    draw_seed)` (`data.build_offline_pairs`, `draw_seed` the recipe's `seed`); the validation images are a seeded
    sample of the rest."""
    training = set(pick_indices(total, train_count, draw_seed))
    left = [index for index in range(total) if index not in training]
    return sorted(random.Random(f"validation/{draw_seed}").sample(left, min(count, len(left))))


def validation_sources(train_count: int, count: int, draw_seed: int) -> list[LabelledImages]:
    """Each offline source's validation images: `held_out_indices` of its train split. A source whose train split is
    all training pairs (easy-VQA's 1,682 images under the default recipe) has none."""
    held_out = []
    for load in SOURCES.values():
        split = load(split="train")  # the whole split, in the order the training draw indexes it
        keep = held_out_indices(len(split.labels), train_count, count, draw_seed)
        images, labels = [split.images[i] for i in keep], [split.labels[i] for i in keep]
        held_out.append(LabelledImages(split.source, images, labels, split.classnames))
    return held_out


def in_batches(items: list, size: int = IMAGE_BATCH) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def checkpoint_scores(
    checkpoint: str, pairs: dict[str, list], classnames: dict[str, list[str]], batch_size: int
) -> dict:
    """A checkpoint's mean contrastive loss over the validation `pairs` (columns) in batches of `batch_size` (the
    training batch: the loss depends on the number of negatives, so a last, smaller batch is left out), and the
    zero-shot top-1 of the pairs' images among their source's `classnames` (the evaluators' default templates)."""
    model, processor = load_start(Start.from_checkpoint("fork", checkpoint, checkpoint))
    model.eval()
    tokenizer = processor.tokenizer
    count = len(pairs["caption"])
    image_features = encode_images(model, processor.image_processor, in_batches(pairs["image"]), count)[0]
    text_features = encode_texts(model, tokenizer, pairs["caption"])[0][0]
    size = min(batch_size, count)
    losses = [
        contrastive_loss(image_features[i : i + size], text_features[i : i + size], model.logit_scale.detach()).item()
        for i in range(0, count - size + 1, size)
    ]
    top1 = {}
    for source in sorted(set(pairs["source"])):
        rows = [i for i, name in enumerate(pairs["source"]) if name == source]
        class_features = zero_shot_classifier(model, tokenizer, classnames[source], prompt_templates(None))[0][0]
        labels = torch.tensor([classnames[source].index(pairs["label"][i]) for i in rows])
        top1[source] = classification_metrics(image_features[rows] @ class_features.T, labels)["top1"]
    return {"loss": sum(losses) / len(losses), "pairs": size * len(losses), "top1": top1}


def curve(runs: dict[str, Path], pairs: dict[str, list], classnames: dict[str, list[str]], batch_size: int,
          last_of: dict[str, Path]) -> list:  # fmt: skip
    """The scores of every checkpoint of `runs` and of the last of `last_of` ({name: run folder}), by step."""
    points = [(step, run, path) for run, folder in runs.items() for step, path in list_checkpoints(folder)]
    for run, folder in last_of.items():
        step, path = list_checkpoints(folder)[-1]
        points.append((step, run, path))
    scored = []
    for step, run, path in tqdm(sorted(points), desc="validation curve", unit="checkpoint"):
        scored.append({"step": step, "run": run, **checkpoint_scores(path, pairs, classnames, batch_size)})
        logger.info(f"{run} step {step}: validation loss {scored[-1]['loss']:.4f}")
    return scored


def write_curve(
    path: Path,
    runs: dict[str, Path],
    recipe: Recipe,
    holds_out: bool,
    last_of: dict[str, Path] | None = None,
) -> None:
    """The main job's stage: write `path` (`seed_curve.json`), one point per checkpoint of `runs` and one for the last
    checkpoint of each run of `last_of` ([{"step", "run", "loss", "pairs", "top1": {source: accuracy}}], by step).

    On the offline corpus (`holds_out`), the recipe's `validation_per_source` pairs per source (true captions,
    composed as the training captions are); a user's `--dataset` holds nothing out, so its curve is empty ([]): the
    report says so."""
    points = []
    if holds_out:
        sources = validation_sources(recipe.train_per_source, recipe.validation_per_source, recipe.seed)
        pairs = caption_pairs(sources, noise=0.0, seed=recipe.seed, attributes=recipe.caption_attributes)
        pairs = pairs[:]  # as columns: the images decoded once, for every checkpoint
        classnames = {data.source: data.classnames for data in sources}
        points = curve(runs, pairs, classnames, recipe.batch_size, last_of or {})
    write_json(path, points)


def curve_finished(path: Path, runs: list[str]) -> bool:
    """A curve is written atomically, after the rest; it is the one asked for when it scores every run of `runs` (an
    empty curve, of a user's `--dataset`, scores none and can)."""
    if not path.is_file():
        return False
    scored = {point["run"] for point in read_json(path)}
    return not scored or set(runs) <= scored
