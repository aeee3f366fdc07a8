"""The README's quick start, run in a fresh Python as a reader would, on the smoke job's outputs: load the job's MODE
with AutoModel, AutoProcessor and the zero-shot pipeline, route and score with it, then assemble the same MODE from
the job's experts and clustering. Then docs/evaluation.md's clip_benchmark lines, whose metrics must be
eval/zeroshot.py's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_mode.lib.evaluation.command_line import zero_shot_main
from modeling_mode.lib.evaluation.outputs import MODE_NAME

pytestmark = pytest.mark.slow  # its tests run the docs' lines in a fresh Python, on the smoke job

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_block(marker: str) -> str:
    """The one python code block of the README or a docs/ page that holds `marker`: the tests run what readers copy,
    not a copy of it."""
    found = [
        (page, block)
        for page in DOCS
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
        if marker in block
    ]
    if len(found) != 1:
        pages = ", ".join(page.relative_to(ROOT).as_posix() for page, _ in found)
        raise LookupError(f"{len(found)} python blocks of the docs hold {marker!r}, not one ({pages or 'none'}).")
    return "\n" + found[0][1]


USE = doc_block("AutoProcessor.from_pretrained(path")  # README, "Use a MODE model"
ROUTE = doc_block("model.route(**prompts)")  # README, the routing and features lines
ASSEMBLE = doc_block("from modeling_mode.lib.assembly.run import assemble")  # README, "Assemble a MODE"
CLIP_BENCHMARK = doc_block("ClipBenchmarkMode.for_task(")  # docs/evaluation.md, "From clip_benchmark"

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


def run_in_a_fresh_python(code: str, job: Path, workdir: Path) -> dict:
    """`code` run in a new Python from `workdir`, where `runs/offline-mix` is the smoke job (as the docs' job command
    writes it); the JSON its last line prints."""
    (workdir / "runs").mkdir()
    (workdir / "runs" / "offline-mix").symlink_to(job)
    env = {**os.environ, "HF_HOME": str(workdir / "hf"), "HF_HUB_OFFLINE": "1"}  # remote code is cached in HF_HOME
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_readme_quick_start_in_a_fresh_python(smoke_run, tmp_path):
    job, _, _ = smoke_run
    result = run_in_a_fresh_python(USE + ROUTE + ASSEMBLE + REPORT, job, tmp_path)

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


def test_the_docs_clip_benchmark_lines_give_eval_zeroshots_metrics(smoke_run, tmp_path):
    job, _, _ = smoke_run
    metrics = run_in_a_fresh_python(CLIP_BENCHMARK + "\nimport json\nprint(json.dumps(metrics))\n", job, tmp_path)
    model, output = job / "seed-0" / "models" / "mode-minilm-2", tmp_path / "zeroshot.json"
    dataset = job / "data" / "eval" / "mnist"
    zero_shot_main(["--model", str(model), "--dataset", str(dataset), "--split", "test", "--output", str(output),
                    "--no-eval-results"])  # fmt: skip
    routing = json.loads((model / "config.json").read_text())["routing"]  # the bridge routes as the config says
    expected = json.loads(output.read_text())["results"][MODE_NAME.format(routing=routing)]
    # The same images ranked the same: equal counts over the held-out digits, to float rounding of the mean alone (one
    # image ranked otherwise moves a metric by 1/30). clip_benchmark's default amp=True moves top-5 by one image here.
    for name in ("top1", "top5"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-9), (name, metrics, expected)
