"""Routing on prompts the model never saw: for each held-out set, how a routed MODE weights its experts when the
class names come in prompt templates the project did not write (clip-benchmark's for the set, OpenAI's 80 ImageNet
templates, bare class names), against its uniform average and its best single expert.

`routing_mass` is the routing weight on the experts that hold the set's source: sum_k w_k * share_k, share_k the
share of the source's training pairs in expert k's cluster (1.0: all the weight where the source's pairs went). It
needs a clustering whose labelled copy has a `source` column (the offline corpus); elsewhere it is None.
"""

from pathlib import Path

import numpy as np
import torch

from ..lib.core.errors import InputError
from ..lib.core.files import write_json
from ..lib.data.pairs import load_pairs
from ..lib.evaluation.inputs import TEMPLATES, class_labels, column_of_type, image_batches, load_model, strings_from
from ..lib.evaluation.scoring import classify, encode_images, prompt_templates
from .data import HeldOutSets, ZeroShotSet
from .layout import BEST_EXPERT_ROW, PAPER_ROW, ensemble_name, result_rows, routing_row

# The template families, each a function of the task and its own templates (None: the evaluators' defaults).
FAMILIES = ("the task's own", "clip-benchmark's", "OpenAI's 80 ImageNet", "bare class names")


def clip_benchmark_templates(task: str) -> list[str] | None:
    """clip-benchmark's templates for a data set of this name, if it publishes any (MNIST's, of the offline sets)."""
    try:
        return strings_from(task, TEMPLATES)
    except InputError:  # no such set in clip-benchmark, or clip-benchmark is not installed
        return None


def family_templates(family: str, task: str, own: str | None) -> list[str] | None:
    """The templates of `family` for `task` (`own`: the task's own, as the job evaluates it); None: none exist."""
    if family == "the task's own":
        return prompt_templates(strings_from(own, TEMPLATES) if own else None)
    if family == "clip-benchmark's":
        return clip_benchmark_templates(task)
    if family == "OpenAI's 80 ImageNet":
        return strings_from("imagenet1k", TEMPLATES)
    return ["{c}"]


def source_shares(labelled_pairs: Path, num_experts: int) -> dict[str, list[float]] | None:
    """{source: share of its training pairs in each expert's cluster}, from the clustering's labelled copy
    (`layout.Replicate.labelled_pairs`)."""
    if not labelled_pairs.is_dir():
        return None
    pairs = load_pairs(str(labelled_pairs))
    if "source" not in pairs.column_names:
        return None
    sources, experts = np.asarray(pairs["source"]), np.asarray(pairs["coarse_id"])
    shares = {}
    for source in np.unique(sources):
        counts = np.bincount(experts[(sources == source) & (experts >= 0)], minlength=num_experts)
        shares[str(source)] = (counts / max(1, counts.sum())).tolist()
    return shares


@torch.inference_mode()
def probe_task(model, tokenizer, image_processor, held_out: ZeroShotSet, task: str, shares: dict | None) -> dict:
    """{family: weights, routing mass on the source's experts, top-1 routed, uniform and of the best expert}."""
    import datasets

    dataset = load_pairs(held_out.dataset, held_out.split)
    image_column = column_of_type(dataset, datasets.Image, "--image-column")
    label_column = column_of_type(dataset, datasets.ClassLabel, "--label-column")
    classnames = strings_from(held_out.classnames, "classnames") if held_out.classnames else None
    labels, classnames = class_labels(dataset, label_column, classnames)
    images = encode_images(model, image_processor, image_batches(dataset, image_column, 64), len(labels))
    labels = torch.as_tensor(labels)
    probed = {}
    for family in FAMILIES:
        templates = family_templates(family, task, held_out.templates)
        if templates is None:
            continue
        weights, scores = classify(model, tokenizer, images, labels, classnames, templates)
        rows, routed = result_rows({"results": scores}), weights[ensemble_name("paper")]
        probed[family] = {
            "num_templates": len(templates),
            "weights": routed.tolist(),
            "routing_mass": float(routed @ torch.tensor(shares[task])) if shares and task in shares else None,
            # all the weight on the expert holding most of the source: where its pairs are split, less than 1
            "routing_mass_ceiling": max(shares[task]) if shares and task in shares else None,
            **{row: rows[row]["top1"] for row in (PAPER_ROW, routing_row("uniform"), BEST_EXPERT_ROW)},
        }
    return probed


def write_routing_probe(path: Path, model_dir: Path, labelled_pairs: Path, held_out: HeldOutSets) -> None:
    """The job's stage: `path` (`results/<model>/routing.json`), {task: `probe_task`'s families} of the MODE in
    `model_dir`, its clustering's labelled copy `labelled_pairs`, on every zero-shot set of `held_out`."""
    model, tokenizer, image_processor = load_model(str(model_dir))
    shares = source_shares(labelled_pairs, model.config.num_experts)
    write_json(path, {task: probe_task(model, tokenizer, image_processor, zeroshot, task, shares)
                      for task, zeroshot in held_out.zeroshot.items()})  # fmt: skip
