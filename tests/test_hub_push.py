"""Pushing a MODE run to a Hub server on 127.0.0.1, then loading what landed as a user would."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import make_image_processor, make_mode, make_tokenizer
from fresh_python import assert_loads_without_package
from hub_server import LocalHub
from huggingface_hub import DatasetCard, HfApi, ModelCard
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from hub_cards import PushError, push_run

REPO_ID = "org/mode-clip"
SEED = "openai/clip-vit-base-patch32"  # what the training records say the seed started from
ROOT = Path(__file__).resolve().parents[1]
EVAL_ROWS = [
    {"task": "zero-shot-image-classification", "dataset": "fashion_mnist", "split": "test", "metric": "accuracy",
     "model": "MODE-2 routed", "value": 0.731},
    {"task": "zero-shot-image-classification", "dataset": "fashion_mnist", "split": "test", "metric": "accuracy",
     "model": "dense", "value": 0.702},
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
    save_file(
        {
            "fine_centroids": mode.fine_centroids,
            "coarse_centroids": torch.randn(2, mode.fine_centroids.shape[1]),
            "fine_to_coarse": torch.tensor(mode.config.fine_to_coarse),
        },
        folder / "clusters.safetensors",
    )
    (folder / "clusters.json").write_text(json.dumps(CLUSTERING))
    return folder


def digest(folder: Path) -> dict:
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


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
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("fashion_mnist", 0.731)] + [
        ("fashion_mnist", 0.702)
    ]
    assert "trust_remote_code=True" in card.text and f'"{REPO_ID}"' in card.text
    assert "| all-MiniLM-L6-v2 | mean | 6 | 2 | two-level |" in card.text  # the clustering
    assert "(Eq. 4-6)" in card.text and "lambda = 0.2" in card.text  # the routing formula used
    assert "| MODE-2 routed | 0.731 |" in card.text  # the evaluation table
    assert "| cluster | 0, 1 |" in card.text and "| learning_rate | 0.0005 |" in card.text  # the training


def test_experts_and_clustered_data_are_pushed_as_their_own_repos(hub, api, run_dir, clusters_dir, mode, tmp_path):
    push_run(run_dir, REPO_ID, api=api, experts=True, clusters_dir=clusters_dir)

    for k, expert in enumerate(mode.experts):
        files = hub.files(f"{REPO_ID}-expert-{k}")
        assert json.loads(files["config.json"])["model_type"] == "clip"
        assert {"tokenizer.json", "preprocessor_config.json", "README.md"} <= files.keys()
        weights = load_safetensors(files["model.safetensors"])
        for name, tensor in expert.state_dict().items():
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
    with pytest.raises(ValueError, match="holds no MODE model"):
        push_run(tmp_path, REPO_ID, api=api)


def test_command_line(hub, run_dir, tmp_path):
    env = hub.client_env(tmp_path)
    command = [sys.executable, str(ROOT / "hub_cards" / "push.py"), str(run_dir), REPO_ID, "--revision", "dev"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(f"{hub.url}/{REPO_ID}/commit/")
    assert "config.json" in hub.files(REPO_ID, revision="dev")

    run = subprocess.run(command + ["--push-dataset"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--push-dataset needs --clusters DIR" in run.stderr


def test_assemble_pushes_at_the_end(hub, clusters_dir, mode, tmp_path):
    experts = []
    for k, expert in enumerate(mode.experts):  # as train/expert.py leaves an expert: weights and training record
        expert.save_pretrained(tmp_path / f"expert-{k}")
        (tmp_path / f"expert-{k}" / "training_args.json").write_text(json.dumps({"args": {}, "run": {"cluster": k}}))
        experts.append(tmp_path / f"expert-{k}")
    for part in (mode.experts[0], make_tokenizer(), make_image_processor()):
        part.save_pretrained(tmp_path / "seed")
    env = hub.client_env(tmp_path)
    command = [
        sys.executable, str(ROOT / "train" / "assemble.py"), "--experts", *map(str, experts), "--clusters",
        str(clusters_dir), "--router-text-model", str(tmp_path / "seed"), "--output", str(tmp_path / "mode"),
        "--push-to-hub", REPO_ID, "--private",
    ]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"pushed: {hub.url}/{REPO_ID}/commit/" in run.stdout and hub.repos["model", REPO_ID].private
    files = hub.files(REPO_ID)
    assert files["model.safetensors"] == (tmp_path / "mode" / "model.safetensors").read_bytes()
    assert "| all-MiniLM-L6-v2 | mean | 6 | 2 | two-level |" in files["README.md"].decode()
