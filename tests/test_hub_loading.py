"""A saved MODE loads by Hub id, offline, in a Python that cannot import this package: the Hub's files suffice."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from conftest import make_image_processor, make_mode, make_tokenizer
from PIL import Image

LABELS = ["a sneaker", "a digit", "a red circle", "a blue square"]
REPO_ID = "org/mode-clip"
REVISION = "a" * 40

# Runs in a fresh interpreter: `modeling_mode` is made unimportable, so only the remote code saved with the model
# can serve. Prints the model's class module, its logits on the given inputs, and the pipeline's scores.
LOAD_FROM_HUB = """
import json, sys
sys.modules["modeling_mode"] = None
import torch
from PIL import Image
from transformers import AutoModel, pipeline

repo_id, image_path, inputs_path = sys.argv[1:]
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
inputs = torch.load(inputs_path)
with torch.no_grad():
    logits = model(**inputs).logits_per_image
classifier = pipeline("zero-shot-image-classification", model=repo_id, trust_remote_code=True)
result = classifier(Image.open(image_path), candidate_labels=json.loads(open(inputs_path + ".json").read()))
print(json.dumps({
    "module": type(model).__module__,
    "logits": logits.tolist(),
    "scores": {r["label"]: r["score"] for r in result},
}))
"""


def save_to_hub_cache(folder, hf_home, repo_id, revision):
    """Lay out `folder` as the Hub cache does for a downloaded snapshot of `repo_id` at `revision`."""
    repo_cache = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / revision)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(revision)


def test_hub_id_loads_offline_without_the_package(tmp_path):
    model, tokenizer, image_processor = make_mode(num_experts=2), make_tokenizer(), make_image_processor()
    saved = tmp_path / "saved"
    for part in (model, tokenizer, image_processor):
        part.save_pretrained(saved)
    save_to_hub_cache(saved, tmp_path / "hf_home", REPO_ID, REVISION)

    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image_path)
    image = Image.open(image_path)
    inputs = dict(
        tokenizer([f"This is a photo of {label}." for label in LABELS], padding=True, return_tensors="pt"),
        pixel_values=image_processor(images=[image], return_tensors="pt").pixel_values,
    )
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "inputs.pt.json").write_text(json.dumps(LABELS))
    with torch.no_grad():
        expected = model(**inputs).logits_per_image

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_ENDPOINT")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_HUB, REPO_ID, str(image_path), str(tmp_path / "inputs.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])

    assert loaded["module"].startswith("transformers_modules.")  # the Hub's copy of the code, not this package
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected)
    expected_scores = dict(zip(LABELS, expected.softmax(dim=-1)[0].tolist()))
    assert loaded["scores"].keys() == expected_scores.keys()
    for label, score in expected_scores.items():
        assert abs(loaded["scores"][label] - score) < 1e-5
