"""A MODE scored by clip_benchmark's own zero-shot classification, through `lib.evaluation.clip_benchmark`'s bridge,
equals eval/zeroshot.py's scoring of it."""

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification
from helpers import family_image_processor, family_mode, make_image_processor, make_mode, make_tokenizer, random_images
from torch.utils.data import DataLoader, TensorDataset

from modeling_mode.lib.evaluation.clip_benchmark import ClipBenchmarkMode, pixel_batch
from modeling_mode.lib.evaluation.scoring import classification_metrics, classify, encode_images

CLASSES = ["a dog", "a cat", "a car", "a boat", "a tree"]
TEMPLATES = ["a photo of {c}.", "a drawing of {c}", "{c}"]


@pytest.mark.parametrize("routing", ["paper", "uniform"])
def test_clip_benchmark_scores_a_mode_as_eval_zeroshot_does(routing):
    model, tokenizer, image_processor = (
        make_mode(num_experts=3, num_fine_clusters=9, seed=1),
        make_tokenizer(),
        make_image_processor(),
    )
    images, labels = random_images(24, seed=2), torch.arange(24) % len(CLASSES)
    ours = classify(model, tokenizer, encode_images(model, image_processor, [images], len(images)), labels, CLASSES,
                    TEMPLATES)[1][f"MODE {routing}"]  # fmt: skip
    bridge = ClipBenchmarkMode.for_task(model, tokenizer, CLASSES, TEMPLATES, routing=routing)
    pixels = image_processor(images=images, return_tensors="pt").pixel_values
    task = TensorDataset(pixels, labels)
    task.classes = CLASSES  # as clip_benchmark's datasets name theirs
    # clip_benchmark's own steps of `evaluate` (whose last, `accuracy`, fails under NumPy 2 in clip_benchmark 1.6):
    # its class embeddings from the bridge's `encode_text`, its logits from the bridge's `encode_image`
    classifier = zeroshot_classification.zero_shot_classifier(bridge, bridge.tokenize, CLASSES, TEMPLATES, "cpu",
                                                              amp=False)  # fmt: skip
    logits, target = zeroshot_classification.run_classification(bridge, classifier, DataLoader(task, batch_size=8),
                                                                "cpu", amp=False)  # fmt: skip
    assert classification_metrics(logits, target) == pytest.approx(ours, abs=1e-6)


@pytest.mark.parametrize("family", ["metaclip_2", "siglip", "siglip2"])
def test_the_bridge_ranks_as_eval_zeroshot_for_every_family(family):
    """SigLIP's bias shifts every class of a task alike, and SigLIP 2's patch mask and grid sizes travel packed in the
    one tensor clip_benchmark's loaders carry (`pixel_batch`)."""
    model, tokenizer, image_processor = family_mode(family, seed=1), make_tokenizer(), family_image_processor(family)
    images, labels = random_images(12, seed=2), torch.arange(12) % len(CLASSES)
    ours = classify(model, tokenizer, encode_images(model, image_processor, [images], len(images)), labels, CLASSES,
                    TEMPLATES)[1]["MODE paper"]  # fmt: skip
    bridge = ClipBenchmarkMode.for_task(model, tokenizer, CLASSES, TEMPLATES)
    task = TensorDataset(pixel_batch(image_processor, images), labels)
    classifier = zeroshot_classification.zero_shot_classifier(bridge, bridge.tokenize, CLASSES, TEMPLATES, "cpu",
                                                              amp=False)  # fmt: skip
    logits, target = zeroshot_classification.run_classification(bridge, classifier, DataLoader(task, batch_size=4),
                                                                "cpu", amp=False)  # fmt: skip
    assert classification_metrics(logits, target) == pytest.approx(ours, abs=1e-6)
