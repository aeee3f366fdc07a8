"""The README's quick start, run in a fresh Python as a reader would: assemble a MODE, save it with its processor,
then load it with AutoModel, AutoProcessor and the zero-shot pipeline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_image_processor, make_tokenizer, tiny_clip_config
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPModel, CLIPTextModelWithProjection

from modeling_mode.configuration_mode_clip import text_tower_config

pytestmark = pytest.mark.slow  # its one test runs the quick start in a fresh Python

FINE_CLUSTERS, EXPERTS = 6, 2
ROOT = Path(__file__).resolve().parents[1]

# What the README takes as given: trained experts, the clustering's fine centroids in the router's space, and the
# seed's text tower. Not README lines.
INPUTS = """
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTextModelWithProjection

experts = [CLIPModel.from_pretrained(f"runs/expert-{k}") for k in range(2)]
clusters = load_file("runs/clusters/clusters.safetensors")
fine_centroids, fine_to_coarse = clusters["fine_centroids"], clusters["fine_to_coarse"].tolist()
router_text_model = CLIPTextModelWithProjection.from_pretrained("runs/router")
"""


def readme_block(marker: str) -> str:
    """The README's python code block that holds `marker`: the test runs what readers copy, not a copy of it."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    (block,) = [block for block in blocks if marker in block]
    return "\n" + block


ASSEMBLE = readme_block("ModeCLIPModel.from_experts(")  # README, "Assemble a MODE from trained experts"
USE = readme_block('AutoProcessor.from_pretrained("runs/mode-clip"')  # README, "Use a MODE model"

# Not README lines: what the test compares, printed as JSON. The pipeline's prompts are its hypothesis template's.
REPORT = """
import json
import torch

with torch.no_grad():
    logits = model(**inputs).logits_per_image
    in_memory = mode.eval()(**inputs).logits_per_image
    prompts = processor(text=[f"This is a photo of {label}." for label in labels], images=image,
                        return_tensors="pt", padding=True)
    expected_scores = mode(**prompts).logits_per_image.softmax(dim=-1)[0]
print(json.dumps({
    "model": type(model).__name__,
    "processor": type(processor).__name__,
    "logits": logits.tolist(),
    "in_memory_logits": in_memory.tolist(),
    "probs": probs.tolist(),
    "scores": {r["label"]: r["score"] for r in classifier(image, candidate_labels=labels)},
    "expected_scores": dict(zip(labels, expected_scores.tolist())),
}))
"""


def write_inputs(root) -> None:
    """Two tiny random experts, their clustering's centroids, the router and the seed's processor, on disk."""
    torch.manual_seed(0)
    config = tiny_clip_config()
    for k in range(EXPERTS):
        CLIPModel(config).save_pretrained(root / "runs" / f"expert-{k}")
    CLIPTextModelWithProjection(text_tower_config(config)).save_pretrained(root / "runs" / "router")
    centroids = torch.nn.functional.normalize(torch.randn(FINE_CLUSTERS, config.projection_dim), dim=-1)
    (root / "runs" / "clusters").mkdir()
    clusters = {"fine_centroids": centroids, "fine_to_coarse": torch.arange(FINE_CLUSTERS) % EXPERTS}
    save_file(clusters, root / "runs" / "clusters" / "clusters.safetensors")
    make_tokenizer().save_pretrained(root / "runs" / "seed")
    make_image_processor().save_pretrained(root / "runs" / "seed")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "image.png")


def test_readme_quick_start_in_a_fresh_python(tmp_path):
    write_inputs(tmp_path)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}  # remote code is cached in HF_HOME
    run = subprocess.run(
        [sys.executable, "-c", INPUTS + ASSEMBLE + USE + REPORT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert (result["model"], result["processor"]) == ("ModeCLIPModel", "CLIPProcessor")
    # The saved and reloaded model against the one assembled, in the same process on the same inputs: the weights
    # round-trip exactly, so only a kernel chosen otherwise at load time could round differently.
    torch.testing.assert_close(
        torch.tensor(result["logits"]), torch.tensor(result["in_memory_logits"]), rtol=0, atol=1e-5
    )
    probs = torch.tensor(result["probs"])
    assert probs.shape == (1, 3) and abs(probs.sum().item() - 1) < 1e-5
    scores, expected = result["scores"], result["expected_scores"]
    assert scores.keys() == expected.keys() and abs(sum(scores.values()) - 1) < 1e-5
    for label, score in expected.items():  # the pipeline is the assembled model on the same image and prompts
        assert abs(scores[label] - score) < 1e-5, (label, scores[label], score)
