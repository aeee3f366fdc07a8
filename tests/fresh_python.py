"""Check that a MODE published under a Hub id loads and classifies in a Python that cannot import this package."""

import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

LABELS = ["a sneaker", "a digit", "a red circle", "a blue square"]

# `modeling_mode` is made unimportable, so only the remote code saved with the model can serve. Prints the model's
# class module, its logits on the given inputs and the zero-shot pipeline's scores.
LOAD = """
import json, sys
sys.modules["modeling_mode"] = None
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

repo_id, image_path, inputs_path, labels = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)
with torch.no_grad():
    logits = model(**torch.load(inputs_path)).logits_per_image
classifier = pipeline("zero-shot-image-classification", model=repo_id, trust_remote_code=True)
result = classifier(Image.open(image_path), candidate_labels=labels)
scores = {r["label"]: r["score"] for r in result}
print(json.dumps({"module": type(model).__module__, "processor": type(processor).__name__, "logits": logits.tolist(),
                  "scores": scores}))
"""


def assert_loads_without_package(repo_id, model, tokenizer, image_processor, workdir, **env):
    """Load `repo_id` with AutoModel, AutoProcessor and the pipeline in a fresh interpreter (`env` added to its
    environment) and check both against `model` on the same image and labels: the pipeline's scores are a softmax of
    the logits, or for a SigLIP MODE their sigmoids (its texts padded as the pipeline pads SigLIP's)."""
    sigmoid = "siglip" in model.config.model_type
    padding = dict(padding="max_length", max_length=64, truncation=True) if sigmoid else dict(padding=True)
    image_path = workdir / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image_path)
    inputs = dict(
        tokenizer([f"This is a photo of {label}." for label in LABELS], return_tensors="pt", **padding),
        **image_processor(images=[Image.open(image_path)], return_tensors="pt"),
    )
    torch.save(inputs, workdir / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits_per_image

    run = subprocess.run(
        [sys.executable, "-c", LOAD, repo_id, str(image_path), str(workdir / "inputs.pt"), json.dumps(LABELS)],
        cwd=workdir,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])

    assert loaded["module"].startswith("transformers_modules.")  # the Hub's copy of the code, not this package
    # Another process, maybe with another thread count: the same weights, summed in another order (float noise).
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=1e-4)
    expected_scores = dict(zip(LABELS, (expected.sigmoid() if sigmoid else expected.softmax(dim=-1))[0].tolist()))
    assert loaded["scores"].keys() == expected_scores.keys()
    for label, score in expected_scores.items():
        assert abs(loaded["scores"][label] - score) < 1e-5
    return loaded
