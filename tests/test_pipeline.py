"""The main job: the offline corpus, and the whole pipeline in smoke mode, resumed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub_cards import model_card
from modeling_mode.corpus import SOURCES, caption_pairs, classification_set

ROOT = Path(__file__).resolve().parents[1]


def test_corpus_captions_come_from_labels_with_the_stated_noise():
    sources = [load(split="train", count=400, seed=0) for load in SOURCES.values()]
    pairs = caption_pairs(sources, noise=0.25, seed=0)
    assert len(pairs) == 1200 and set(pairs["source"]) == set(SOURCES)
    clean = pairs.filter(lambda row: not row["noisy"])
    assert all(label in caption for label, caption in zip(clean["label"], clean["caption"]))
    assert 0.15 < sum(pairs["noisy"]) / len(pairs) < 0.3  # 25% swapped, a few onto an identical caption
    held_out = classification_set(SOURCES["easy_vqa"](split="test", count=50, seed=0))
    assert held_out.features["label"].names[0] == "black circle" and len(held_out) == 50


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("job") / "offline-mix"
    command = [sys.executable, str(ROOT / "train" / "pipeline.py"), "--output", str(output), "--smoke"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    timings = json.loads((output / "timings.json").read_text())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    return output, timings, again.stdout + again.stderr


def test_smoke_run_trains_evaluates_and_reports(smoke_run):
    output, timings, _ = smoke_run
    report = (output / "report.md").read_text()
    for row in ("mode-minilm-2 routed (paper)", "mode-minilm-2 uniform", "mode-minilm-2 best expert", "dense-2"):
        assert f"| {row} |" in report
    assert "| mode-random-2 routed (paper) |" in report and "| mode-seedtext-2 routed (paper) |" in report
    for plot in ("cluster_sizes.png", "routing_weights.png", "accuracy.png"):
        assert (output / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = json.loads((output / "results" / "mode-minilm-2" / "zeroshot-mnist.json").read_text())["routing_weights"]
    assert sum(weights["MODE paper"]) == pytest.approx(1.0)
    assert {"data", "seed", "cluster-minilm-2", "expert-minilm-2-1", "dense-2", "retrieval-seed"} <= timings.keys()
    card = model_card(output / "models" / "mode-minilm-2", "org/mode-minilm-2")  # with the run's own numbers
    rows = json.loads((output / "models" / "mode-minilm-2" / "eval_results.json").read_text())
    routed = next(r for r in rows if r["dataset"] == "mnist" and r["model"] == "MODE paper" and r["metric"] == "top1")
    assert f"| mnist | test | top1 | MODE paper | {routed['value']} |" in card.text


def test_a_rerun_resumes_from_the_stages_outputs(smoke_run):
    output, timings, log = smoke_run
    assert json.loads((output / "timings.json").read_text()) == timings  # nothing ran again
    assert log.count("done before, skipped") == len(timings)
