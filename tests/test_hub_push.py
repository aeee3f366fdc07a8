"""Pushing a MODE run to a Hub server on 127.0.0.1, then loading what landed as a user would."""

import hashlib
import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fresh_python import assert_loads_without_package
from helpers import (
    FILES,
    cluster_tar_corpus,
    make_image_processor,
    make_mode,
    make_tokenizer,
    run_script,
    tiny_clip_config,
    write_clustering,
    write_run,
    write_tar_corpus,
)
from hub_server import LocalHub
from huggingface_hub import DatasetCard, HfApi, ModelCard
from PIL import Image
from safetensors.torch import load as load_safetensors
from transformers import CLIPModel

from modeling_mode.lib.assembly.run import assemble
from modeling_mode.lib.clustering.labels_table import check_labels_match, labels_for, part_path, read_labels, read_meta
from modeling_mode.lib.clustering.outputs import Clusters, read_finished_run, save_clusters
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.data.data_files import list_data_files
from modeling_mode.lib.hub.commits import PushError
from modeling_mode.lib.publish.run import push_run

REPO_ID = "org/mode-clip"
SEED = "openai/clip-vit-base-patch32"  # what the training records say the seed started from
ROOT = Path(__file__).resolve().parents[1]
EVAL_ROWS = [  # as eval/zeroshot.py writes them: the MODE routed as its config says, and a baseline
    {"task": "zero-shot-image-classification", "dataset": "fashion_mnist", "split": "test", "metric": "top1",
     "model": "MODE paper", "value": 0.731},
    {"task": "zero-shot-image-classification", "dataset": "fashion_mnist", "split": "test", "metric": "top1",
     "model": "expert 0", "value": 0.702},
]  # fmt: skip
CLUSTERING = {
    "encoder": "all-MiniLM-L6-v2",
    "pooling": "mean",
    "embed_dim": 384,
    "num_fine_clusters": 6,
    "num_experts": 2,
    "method": "two-level",
    "balance": "capacity-capped greedy",
    "fit_sample": 8,
    "seed": 0,
    "fine_sizes": [2, 1, 1, 1, 2, 1],
    "coarse_sizes": [5, 3],
    "imbalance": 1.5,
    "num_missing_captions": 0,
    "caption_column": "caption",
}
# The embedding pass' layout and caption seed say which caption of each pair the clustering embedded.
EMBEDDINGS = {"embed_dim": 384, "num_rows": 8, "shard_rows": 65536, "caption_seed": 0}
SETTINGS = {"method": "two-level", "fine_clusters": 6, "experts": 2, "seed": 0, "embeddings": EMBEDDINGS}


@pytest.fixture
def hub(monkeypatch):
    # The suite runs offline; these tests talk to a Hub on 127.0.0.1 and nowhere else.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token="hf_local_test_token")


@pytest.fixture
def mode():
    return make_mode(num_experts=2, num_fine_clusters=6)


@pytest.fixture
def run_dir(tmp_path, mode):
    """A MODE run as assemble and the evaluators leave it: model, processor, clustering and evaluation records."""
    folder = tmp_path / "mode-clip"
    for part in (mode, make_tokenizer(), make_image_processor()):
        part.save_pretrained(folder)
    training = [
        {"args": {"learning_rate": 5e-4, "max_steps": 400}, "run": {"cluster": k, "start": "fork", "base_model": SEED}}
        for k in range(2)
    ]
    (folder / "assembly.json").write_text(json.dumps({"clustering": CLUSTERING, "expert_training": training}))
    (folder / "eval_results.json").write_text(json.dumps(EVAL_ROWS))
    return folder


@pytest.fixture
def clusters_dir(tmp_path, mode):
    """A finished clustering run of 8 pairs into the MODE's clusters, written as train/cluster.py writes it."""
    folder = tmp_path / "clusters"
    rng = np.random.default_rng(0)
    pairs = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(8)],
            "caption": [f"a photo of thing {i}" for i in range(8)],
            "fine_id": [0, 0, 1, 2, 3, 4, 4, 5],
            "coarse_id": [mode.config.fine_to_coarse[i] for i in [0, 0, 1, 2, 3, 4, 4, 5]],
        },
        features=datasets.Features(
            image=datasets.Image(), caption=datasets.Value("string"), fine_id=datasets.Value("int32"),
            coarse_id=datasets.Value("int32"),
        ),
    )  # fmt: skip
    pairs.save_to_disk(folder / "dataset")
    fit = Clusters(
        fine_centroids=mode.fine_centroids.numpy(),
        coarse_centroids=np.random.default_rng(1).standard_normal((2, mode.fine_centroids.shape[1]), np.float32),
        fine_to_coarse=np.array(mode.config.fine_to_coarse),
        method="two-level",
        fit_sizes=np.array(CLUSTERING["fine_sizes"]),
    )
    save_clusters(folder / "clusters.safetensors", fit, SETTINGS)
    (folder / "clusters.json").write_text(json.dumps(CLUSTERING | {"settings": SETTINGS}))  # the run's last file
    return folder


def digest(folder: Path) -> dict:
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_pushed_mode_loads_with_auto_model_and_pipeline(hub, api, run_dir, mode, tmp_path):
    push_run(run_dir, REPO_ID, api=api)

    files = hub.files(REPO_ID)
    expected = {"model.safetensors", "config.json", "README.md", "tokenizer.json", "preprocessor_config.json"}
    assert expected | {"modeling_mode_clip.py", "configuration_mode_clip.py", "routing.py"} <= files.keys()
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForZeroShotImageClassification"]
    assert_loads_without_package(
        REPO_ID,
        mode,
        make_tokenizer(),
        make_image_processor(),
        tmp_path,
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="0",
    )


def test_model_card_metadata_parses_and_holds_the_run(hub, api, run_dir):
    push_run(run_dir, REPO_ID, api=api, license="apache-2.0")

    card = ModelCard(hub.files(REPO_ID)["README.md"].decode())  # huggingface_hub's own metadata parsing
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == SEED
    # The model-index holds the MODE's own result, under the Hub's metric id; the expert's is a baseline.
    results = [(r.dataset_name, r.metric_type, r.metric_name, r.metric_value) for r in card.data.eval_results]
    assert results == [("fashion_mnist", "accuracy", "top-1 accuracy", 0.731)]
    assert "trust_remote_code=True" in card.text and f'"{REPO_ID}"' in card.text
    assert "| all-MiniLM-L6-v2 | mean | 6 | 2 | two-level |" in card.text  # the clustering
    assert "(Eq. 4-6)" in card.text and "lambda = 0.2" in card.text  # the routing formula used
    assert "| MODE paper | 0.731 |" in card.text and "| expert 0 | 0.702 |" in card.text  # the evaluation table
    assert "| cluster | 0, 1 |" in card.text and "| learning_rate | 0.0005 |" in card.text  # the training


def test_experts_and_clustered_data_are_pushed_as_their_own_repos(hub, api, run_dir, clusters_dir, mode, tmp_path):
    push_run(run_dir, REPO_ID, api=api, experts=True, clusters_dir=clusters_dir)

    for k, expert in enumerate(mode.experts):
        files = hub.files(f"{REPO_ID}-expert-{k}")
        assert json.loads(files["config.json"])["model_type"] == "clip"
        assert {"tokenizer.json", "preprocessor_config.json", "README.md"} <= files.keys()
        weights = load_safetensors(files["model.safetensors"])
        for name, tensor in expert.state_dict().items():  # saved and read back, not recomputed: exact
            assert torch.equal(weights[name], tensor), name

    files = hub.files(f"{REPO_ID}-clusters", repo_type="dataset")
    assert {"clusters.safetensors", "clusters.json", "README.md", "data/train-00000-of-00001.parquet"} <= files.keys()
    (tmp_path / "pushed.parquet").write_bytes(files["data/train-00000-of-00001.parquet"])
    pushed = datasets.Dataset.from_parquet(str(tmp_path / "pushed.parquet"))
    assert pushed["coarse_id"] == datasets.load_from_disk(str(clusters_dir / "dataset"))["coarse_id"]
    card = DatasetCard(files["README.md"].decode())
    assert card.data.task_categories == ["zero-shot-image-classification"]
    assert "| 0 | " in card.text and "| 5 |" in card.text  # expert rows with their pair counts


def test_private_push_to_a_branch(hub, api, run_dir):
    push_run(run_dir, REPO_ID, api=api, private=True, revision="v1", commit_message="first try")
    assert hub.repos["model", REPO_ID].private
    assert "model.safetensors" in hub.files(REPO_ID, revision="v1")
    assert hub.commits(REPO_ID) == 0  # main untouched


def test_pushing_to_an_existing_repo_adds_a_commit(hub, api, run_dir, caplog):
    push_run(run_dir, REPO_ID, api=api)
    with caplog.at_level(logging.INFO, logger="mode_clip.push"):
        push_run(run_dir, REPO_ID, api=api)
    assert hub.commits(REPO_ID) == 2
    assert f"model repo {REPO_ID} exists: adding a commit to it" in caplog.text


def test_a_failed_push_names_what_did_not_go_and_leaves_the_run_untouched(hub, api, run_dir):
    before = digest(run_dir)
    hub.failing_repos.add(f"{REPO_ID}-expert-1")
    with pytest.raises(PushError) as failure:
        push_run(run_dir, REPO_ID, api=api, experts=True)
    message = str(failure.value)
    assert f"to model repo {REPO_ID}-expert-1 failed" in message and "507" in message
    assert "none of these" in message and "model.safetensors" in message and "config.json" in message
    assert f"{hub.url}/{REPO_ID}/commit/" in message and f"{REPO_ID}-expert-0/commit/" in message  # what landed
    assert hub.commits(f"{REPO_ID}-expert-1") == 0
    assert digest(run_dir) == before


def test_no_token_is_a_clear_error(hub, run_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(PushError, match="no Hugging Face token"):
        push_run(run_dir, REPO_ID, api=HfApi(endpoint=hub.url))
    assert not hub.repos


def test_a_directory_without_a_mode_is_a_clear_error(api, tmp_path):
    with pytest.raises(InputError, match="holds no MODE model"):
        push_run(tmp_path, REPO_ID, api=api)


@pytest.mark.slow
def test_command_line(hub, run_dir, tmp_path):
    env = hub.client_env(tmp_path)
    script = str(ROOT / "hub_cards" / "push.py")  # run as a script, by its path
    command = [sys.executable, script, "--model_dir", str(run_dir), "--hub_model_id", REPO_ID, "--revision", "dev"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(f"{hub.url}/{REPO_ID}/commit/")
    assert "config.json" in hub.files(REPO_ID, revision="dev")


@pytest.mark.slow
def test_assemble_pushes_at_the_end(hub, clusters_dir, mode, tmp_path):
    experts = []
    for k, expert in enumerate(mode.experts):  # as train/expert.py leaves an expert: weights and training record
        expert.save_pretrained(tmp_path / f"expert-{k}")
        record = {"args": {}, "run": {"cluster": k, "final_step": 6}}  # a finished run
        (tmp_path / f"expert-{k}" / "training_args.json").write_text(json.dumps(record))
        experts.append(tmp_path / f"expert-{k}")
    for part in (mode.experts[0], make_tokenizer(), make_image_processor()):
        part.save_pretrained(tmp_path / "seed")
    env = hub.client_env(tmp_path)
    command = [
        sys.executable, str(ROOT / "train" / "assemble.py"), "--experts", *map(str, experts), "--clusters",
        str(clusters_dir), "--router-text-model", str(tmp_path / "seed"), "--router", "seed-text",
        "--output", str(tmp_path / "mode"), "--push_to_hub", "--hub_model_id", REPO_ID, "--hub_private_repo",
    ]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"pushed: {hub.url}/{REPO_ID}/commit/" in run.stdout and hub.repos["model", REPO_ID].private
    files = hub.files(REPO_ID)
    assert files["model.safetensors"] == (tmp_path / "mode" / "model.safetensors").read_bytes()  # the file itself
    assert "| all-MiniLM-L6-v2 | mean | 6 | 2 | two-level |" in files["README.md"].decode()


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete(*names):
    return lambda folder: [(folder / name).unlink() for name in names]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: cut_in_half(folder / "model.safetensors"), "model.safetensors cannot be read"),
        (delete("modeling_mode_clip.py"), "has no modeling_mode_clip.py, remote code its config.json needs"),
        (delete("routing.py"), "has no routing.py, remote code"),  # imported by modeling_mode_clip.py
        (delete("tokenizer.json", "tokenizer_config.json"), "The processor of the MODE in"),
        (delete("preprocessor_config.json"), "The processor of the MODE in"),
    ],
    ids=["truncated-weights", "no-modeling-file", "no-imported-module", "no-tokenizer", "no-image-processor"],
)
def test_an_incomplete_model_is_refused_before_any_request(hub, api, run_dir, damage, message):
    damage(run_dir)
    with pytest.raises(InputError, match=message):
        push_run(run_dir, REPO_ID, api=api)
    assert hub.requests == [] and not hub.repos


def test_an_unfinished_clustering_is_refused_before_the_model_is_pushed(hub, api, run_dir, clusters_dir, tmp_path):
    shutil.rmtree(clusters_dir / "dataset")
    with pytest.raises(InputError, match=r"The clustered pairs .*/dataset' does not exist"):
        push_run(run_dir, REPO_ID, api=api, clusters_dir=clusters_dir)
    # A re-clustering killed after its new centroids, before its clusters.json.
    write_clustering(tmp_path / "refit", encoder="another/encoder", seed=1)
    shutil.copy(tmp_path / "refit" / "clusters.safetensors", clusters_dir / "clusters.safetensors")
    with pytest.raises(InputError, match="come from different clustering runs"):
        push_run(run_dir, REPO_ID, api=api, clusters_dir=clusters_dir)
    assert hub.requests == [] and not hub.repos


def test_bad_input_to_the_script_is_one_line_and_exit_status_2(tmp_path, capsys, monkeypatch):
    script = ROOT / "hub_cards" / "push.py"
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    for argv, message in [
        (["--model_dir", str(tmp_path / "no-model"), "--hub_model_id", REPO_ID], "holds no MODE model"),
        (["--model-dir", str(tmp_path), "--repo_id", "not a repo id"], "repo_id 'not a repo id' is not a Hub repo id"),
        (["--model_dir", str(tmp_path), "--repo_id", REPO_ID, "--push-dataset"], "--push-dataset needs --clusters"),
    ]:
        assert run_script(script, *argv, monkeypatch=monkeypatch) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr


def test_an_unreachable_hub_is_one_line_and_exit_status_1(run_dir, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")  # what HF_ENDPOINT sets
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    argv = ["--model_dir", str(run_dir), "--hub_model_id", REPO_ID]
    assert run_script(ROOT / "hub_cards" / "push.py", *argv, monkeypatch=monkeypatch) == 1
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.startswith(f"error: pushing to model repo {REPO_ID} failed (ConnectError: ")
    assert "none of these" in line and line.endswith("Commits that did land before it: none.\n")


def test_a_connection_lost_after_a_commit_lists_the_commits_that_landed(hub, api, run_dir):
    hub.unreachable_repos.add(f"{REPO_ID}-expert-1")
    with pytest.raises(PushError) as failure:
        push_run(run_dir, REPO_ID, api=api, experts=True)
    message = str(failure.value)
    assert f"pushing to model repo {REPO_ID}-expert-1 failed (RemoteProtocolError: " in message
    landed = message.split("Commits that did land before it: ")[1]
    assert landed.startswith(f"{hub.url}/{REPO_ID}/commit/") and f"{hub.url}/{REPO_ID}-expert-0/commit/" in landed
    assert "\n" not in message


def test_nothing_pushed_names_a_local_path(hub, api, tmp_path):
    """Records keep local paths for whoever resumes the run here; what goes to the Hub names inputs by their last
    path component (a Hub id as it is), in JSON files, safetensors metadata and cards alike."""
    inputs = write_run(tmp_path / "runs")
    mode_dir = tmp_path / "runs" / "mode"
    assemble(
        [str(e) for e in inputs["experts"]],
        str(inputs["clusters"]),
        str(inputs["seed"]),
        str(mode_dir),
        router_space="seed-text",
    )
    local_eval = tmp_path / "data" / "fashion_mnist"  # an evaluation set on this machine
    (mode_dir / "eval_results.json").write_text(json.dumps([EVAL_ROWS[0] | {"dataset": str(local_eval)}]))

    push_run(mode_dir, REPO_ID, api=api, experts=True, clusters_dir=inputs["clusters"])

    pushed = {
        (key, path): content for key, repo in hub.repos.items() for path, content in repo.head("main")[1].items()
    }
    assert len({key for key, _ in pushed}) == 4  # the MODE, two experts and the clustered data
    for where, content in pushed.items():
        for local in (str(tmp_path), str(ROOT), f"{Path.home()}/"):
            assert local.encode() not in content, (where, local)
    local_record = json.loads((mode_dir / "assembly.json").read_text())
    assert local_record["experts"] == [str(e) for e in inputs["experts"]]
    record = json.loads(hub.files(REPO_ID)["assembly.json"])
    assert record["experts"] == ["expert-0", "expert-1"] and record["router_text_model"] == "seed"
    local_config = json.loads((mode_dir / "config.json").read_text())
    config = json.loads(hub.files(REPO_ID)["config.json"])
    assert local_config["clustering_encoder"] == str(tmp_path / "runs" / "encoders" / "all-MiniLM-L6-v2")
    assert (
        config["clustering_encoder"] == "all-MiniLM-L6-v2" and config["expert_config"]["_name_or_path"] == "expert-0"
    )
    assert (
        config["fine_to_coarse"] == local_config["fine_to_coarse"] and config["auto_map"] == local_config["auto_map"]
    )
    assert "| all-MiniLM-L6-v2 | mean | 6 | 2 | two-level |" in hub.files(REPO_ID)["README.md"].decode()
    assert "| fashion_mnist |" in hub.files(REPO_ID)["README.md"].decode()

    # The pushed clustering still reads as a finished run: its report and its centroids' settings agree.
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name in ("clusters.json", "clusters.safetensors"):
        (downloaded / name).write_bytes(hub.files(f"{REPO_ID}-clusters", repo_type="dataset")[name])
    _, report = read_finished_run(downloaded)
    assert report["encoder"] == "all-MiniLM-L6-v2" and report["settings"]["embeddings"]["dataset"] == "pairs"


@pytest.fixture(scope="module")
def streamed_clusters(tmp_path_factory) -> Path:
    """A finished train/cluster.py --streaming run of a folder of tar shards: labels table, centroids, no copy."""
    root = tmp_path_factory.mktemp("streamed")
    torch.manual_seed(0)
    for part in (CLIPModel(tiny_clip_config()), make_tokenizer()):
        part.save_pretrained(root / "encoder")
    return cluster_tar_corpus(write_tar_corpus(root / "corpus"), str(root / "encoder"), root / "clusters")


def test_a_streaming_clusterings_labels_table_is_pushed_without_local_paths(
    hub, api, run_dir, streamed_clusters, tmp_path, tmp_path_factory, monkeypatch
):
    """A streaming run has no labelled copy: its labels table goes instead, each data file named by its path relative
    to the corpus' root. Downloaded, its parts load with `datasets` and hold the run's ids, and it is a labels table
    of a copy of the corpus anywhere."""
    push_run(run_dir, REPO_ID, api=api, clusters_dir=streamed_clusters)

    files = hub.files(f"{REPO_ID}-clusters", repo_type="dataset")
    parts = [f"labels/part-{part:05d}.parquet" for part in range(FILES)]
    assert files.keys() == {"README.md", "clusters.json", "clusters.safetensors", "labels/labels.json", *parts}
    for name, content in files.items():
        for local in (str(tmp_path_factory.getbasetemp()), str(ROOT), f"{Path.home()}/"):
            assert local.encode() not in content, (name, local)
    downloaded = tmp_path / "downloaded"
    for name, content in files.items():
        (downloaded / name).parent.mkdir(parents=True, exist_ok=True)
        (downloaded / name).write_bytes(content)

    pushed = datasets.load_dataset(
        "parquet", data_files=[str(downloaded / part) for part in parts], split="train", cache_dir=str(tmp_path / "c")
    )
    local = [row for part in read_labels(streamed_clusters / "labels")[1] for row in part.to_pylist()]
    for column in ("key", "row", "fine_id", "coarse_id"):
        assert pushed[column] == [row[column] for row in local], column
    assert pushed["source"][:31:30] == ["shard-00.tar", "shard-01.tar"] and local[0]["source"].endswith("shard-00.tar")
    meta = read_meta(downloaded / "labels")
    assert meta["dataset"] == "corpus" and [file["path"] for file in meta["data_files"]] == sorted(
        set(pushed["source"])
    )
    assert read_finished_run(downloaded)[1]["settings"] == meta["clusters_settings"]  # still one run's files

    copy = shutil.copytree(streamed_clusters.parent / "corpus", tmp_path / "elsewhere" / "copy")  # wherever it lies
    copied = list_data_files(str(copy))
    check_labels_match(meta, str(copy), "train", copied, [Path(file).name for file in copied])
    name = "shard-03.tar"
    assert labels_for(downloaded / "labels", name) == labels_for(streamed_clusters / "labels", name)

    card = DatasetCard(files["README.md"].decode())
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "labels/part-*.parquet"}]}
    ]
    text = " ".join(card.text.split())
    assert "of the 180 image-caption pairs of the corpus `corpus` (split `train`, 6 data files)" in text
    assert "its path relative to the corpus' root" in text and "data/*.parquet" not in text


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda labels: (labels / "labels.json").unlink(), r"holds no complete labels table"),  # half copied
        (lambda labels: (labels / "part-00002.parquet").write_bytes(b"PAR1"), r"part-00002.parquet cannot be read"),
        (lambda labels: (labels / "part-00004.parquet").unlink(), r"part-00004.parquet is missing"),
        (lambda labels: edited_part(labels, 1, "fine_id", 99), r"part-00001.parquet row 0 .*: fine id 99, coarse"),
    ],
    ids=["unfinished", "truncated-part", "missing-part", "fine-id-out-of-range"],
)
def test_a_streaming_clustering_with_a_damaged_labels_table_is_refused_before_any_request(
    hub, api, run_dir, streamed_clusters, tmp_path, damage, message
):
    """Everything a push publishes is checked before its first commit: a damaged table leaves no commit at all."""
    clusters = tmp_path / "clusters"
    shutil.copytree(streamed_clusters, clusters)
    damage(clusters / "labels")
    with pytest.raises(InputError, match=message):
        push_run(run_dir, REPO_ID, api=api, experts=True, clusters_dir=clusters)
    assert hub.requests == [] and not hub.repos


def edited_part(labels: Path, part: int, column: str, value) -> None:
    """Part `part` of a labels table with its first row's `column` set to `value`, as a hand edit would."""
    table = pq.read_table(part_path(labels, part))
    values = table[column].to_pylist()
    values[0] = value
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.int32())),
                   part_path(labels, part))  # fmt: skip
