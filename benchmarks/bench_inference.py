"""Zero-shot pipeline latency of MODE-4 against a single CLIPModel of the same architecture, in one process.

    python benchmarks/bench_inference.py [--images 8] [--rounds 5]

Each model (ViT-B/32 shapes, random weights) answers `pipeline("zero-shot-image-classification")` over the same
images and labels. MODE-4 is four copies of the single model's architecture plus a router text tower of the same
size, run with all experts and with `router_top_k=1`. Rounds alternate between the three pipelines so that machine
noise hits them alike; the figure is the median time per image. The tokenizer is character-level (no download), so
prompts are ~30 tokens long.
"""

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, pipeline

from modeling_mode import ModeCLIPModel
from modeling_mode.configuration_mode_clip import text_tower_config
from modeling_mode.lib.training.processors import char_level_tokenizer, pil_image_processor

LABELS = [
    "a sneaker",
    "a shirt",
    "a bag",
    "a dress",
    "a coat",
    "a sandal",
    "a trouser",
    "a pullover",
    "a boot",
    "a hat",
]


def build_models(config: CLIPConfig, num_experts: int, num_fine_clusters: int):
    torch.manual_seed(0)
    single = CLIPModel(config).eval()
    experts = [copy.deepcopy(single) for _ in range(num_experts)]
    router = CLIPTextModelWithProjection(text_tower_config(config)).eval()
    centroids = torch.nn.functional.normalize(torch.randn(num_fine_clusters, config.projection_dim), dim=-1)
    fine_to_coarse = [i % num_experts for i in range(num_fine_clusters)]
    every_expert = ModeCLIPModel.from_experts(experts, centroids, fine_to_coarse, router).eval()
    top1 = ModeCLIPModel.from_experts(experts, centroids, fine_to_coarse, router, router_top_k=1).eval()
    return {"CLIPModel": single, f"MODE-{num_experts}, all experts": every_expert, f"MODE-{num_experts}, top-1": top1}


def seconds_per_image(classifier, images) -> list[float]:
    times = []
    for image in images:
        start = time.perf_counter()
        classifier(image, candidate_labels=LABELS)
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    config = CLIPConfig()  # ViT-B/32 shapes, random weights
    image_processor = pil_image_processor(config.vision_config.image_size)
    tokenizer = char_level_tokenizer()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(args.images)]

    classifiers = {
        name: pipeline(
            "zero-shot-image-classification", model=model, tokenizer=tokenizer, image_processor=image_processor
        )
        for name, model in build_models(config, num_experts=4, num_fine_clusters=64).items()
    }
    times = {name: [] for name in classifiers}
    with torch.inference_mode():
        for classifier in classifiers.values():
            seconds_per_image(classifier, images[:2])  # warm-up
        for _ in range(args.rounds):
            for name, classifier in classifiers.items():
                times[name] += seconds_per_image(classifier, images)

    baseline = statistics.median(times["CLIPModel"])
    print(f"zero-shot pipeline, ViT-B/32, {len(LABELS)} labels, {torch.get_num_threads()} threads, ", end="")
    print(f"median of {args.rounds * args.images} images, torch {torch.__version__}")
    print("| model | ms / image | ratio to CLIPModel |\n|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {1000 * median:.1f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
