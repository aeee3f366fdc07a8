"""A saved MODE loads by Hub id from a populated HF_HOME cache, offline, without this package installed."""

import shutil

import pytest
from fresh_python import assert_loads_without_package
from helpers import make_image_processor, make_mode, make_tokenizer

pytestmark = pytest.mark.slow  # its one test loads the model in a fresh Python

REPO_ID = "org/mode-clip"
REVISION = "a" * 40


def save_to_hub_cache(folder, hf_home, repo_id, revision):
    """Lay out `folder` as the Hub cache does for a downloaded snapshot of `repo_id` at `revision`."""
    repo_cache = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / revision)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(revision)


def test_hub_id_loads_offline_from_the_cache_without_the_package(tmp_path):
    model, tokenizer, image_processor = make_mode(num_experts=2), make_tokenizer(), make_image_processor()
    for part in (model, tokenizer, image_processor):
        part.save_pretrained(tmp_path / "saved")
    save_to_hub_cache(tmp_path / "saved", tmp_path / "hf_home", REPO_ID, REVISION)

    assert_loads_without_package(
        REPO_ID, model, tokenizer, image_processor, tmp_path, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1"
    )
