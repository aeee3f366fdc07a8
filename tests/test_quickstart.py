"""The README's quick start, run in a fresh Python as a reader would, on the smoke job's outputs: load the job's MODE
with AutoModel, AutoProcessor and the zero-shot pipeline, route and score with it, then assemble the same MODE from
the job's experts and clustering."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # its one test runs the quick start in a fresh Python, on the smoke job

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
    """The README's python code block that holds `marker`: the test runs what readers copy, not a copy of it."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    (block,) = [block for block in blocks if marker in block]
    return "\n" + block


USE = readme_block("AutoProcessor.from_pretrained(path")  # README, "Use a MODE model"
ROUTE = readme_block("model.route(**prompts)")  # README, the routing and features lines
ASSEMBLE = readme_block("from modeling_mode.lib.assembly import assemble")  # README, "Assemble a MODE"

# Not README lines: what the test compares, printed as JSON. The pipeline's prompts are its hypothesis template's.
REPORT = """
import json
import torch

with torch.no_grad():
    logits = model(**inputs).logits_per_image
    assembled = mode.eval()(**inputs).logits_per_image
    hypotheses = processor(text=[f"This is a photo of {label}." for label in labels], images=image,
                           return_tensors="pt", padding=True)
    expected_scores = model(**hypotheses).logits_per_image.softmax(dim=-1)[0]
print(json.dumps({
    "model": type(model).__name__,
    "processor": type(processor).__name__,
    "logits": logits.tolist(),
    "assembled_logits": assembled.tolist(),
    "probs": probs.tolist(),
    "weights": weights.tolist(),
    "features": [list(text_features.shape), list(image_features.shape)],
    "scores": {r["label"]: r["score"] for r in classifier(image, candidate_labels=labels)},
    "expected_scores": dict(zip(labels, expected_scores.tolist())),
}))
"""


def test_readme_quick_start_in_a_fresh_python(smoke_run, tmp_path):
    job, _, _ = smoke_run
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "offline-mix").symlink_to(job)  # where the README's job command writes
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}  # remote code is cached in HF_HOME
    run = subprocess.run(
        [sys.executable, "-c", USE + ROUTE + ASSEMBLE + REPORT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert (result["model"], result["processor"]) == ("ModeCLIPModel", "CLIPProcessor")
    # The job's MODE and the one the README assembles from the same experts and clustering, in one process on the
    # same inputs: the same weights and centres, so only a kernel chosen otherwise at load time could round otherwise.
    torch.testing.assert_close(
        torch.tensor(result["logits"]), torch.tensor(result["assembled_logits"]), rtol=0, atol=1e-5
    )
    probs, weights = torch.tensor(result["probs"]), torch.tensor(result["weights"])
    assert probs.shape == (1, 3) and abs(probs.sum().item() - 1) < 1e-5
    assert weights.shape == (2,) and (weights >= 0).all() and abs(weights.sum().item() - 1) < 1e-5
    assert result["features"][0][0] == 3 and result["features"][1][0] == 1  # three prompts, one image
    scores, expected = result["scores"], result["expected_scores"]
    assert scores.keys() == expected.keys() and abs(sum(scores.values()) - 1) < 1e-5
    for label, score in expected.items():  # the pipeline is the model on the same image and prompts
        assert abs(scores[label] - score) < 1e-5, (label, scores[label], score)
    assert (tmp_path / "runs" / "mode-clip" / "config.json").is_file()
