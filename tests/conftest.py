"""The suite's fixtures: tiny random CLIP parts built here (tests/helpers.py), no downloads."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from helpers import make_image_processor, make_tokenizer, reset_accelerate_state, tiny_clip_config
from transformers import CLIPModel

from modeling_mode.lib.training.checkpoints import latest_checkpoint
from modeling_mode.lib.training.outputs import is_finished

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items):
    """On pytest-xdist's workers (`-n 2`, `--dist loadgroup`), each module's tests share a worker, so that a module's
    fixtures are built once, and every test that reads the smoke job shares the worker that ran it. Those go first,
    the longest group, so that the other worker takes the rest meanwhile (without xdist, only the order changes)."""
    for item in items:
        group = "the smoke job" if "smoke_run" in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: "smoke_run" not in item.fixturenames)  # stable: the rest keep their order


@pytest.fixture
def fresh_accelerate_state():
    """For test modules that run training in their own process: `pytestmark = usefixtures(...)`."""
    yield
    reset_accelerate_state()


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def image_processor():
    return make_image_processor()


@pytest.fixture
def tiny_clip(tmp_path) -> str:
    """A saved tiny random CLIPModel with its tokenizer: a CLIP caption encoder."""
    torch.manual_seed(0)
    path = tmp_path / "tiny-clip"
    CLIPModel(tiny_clip_config()).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke job, killed in its seed's training right after the step-4 checkpoint, then run again to the end: the
    main job's tests (test_job.py) and the README's quick start (test_quickstart.py) read it."""
    output = tmp_path_factory.mktemp("job") / "offline-mix"
    command = [sys.executable, str(ROOT / "train" / "job.py"), "--output", str(output), "--smoke"]
    killer = f"{sys.executable} {ROOT / 'tests' / 'killing_launcher.py'} 4"
    killed = subprocess.run(command + ["--launcher", killer], capture_output=True, text=True, timeout=900)
    assert killed.returncode != 0 and "stage seed-0/seed failed" in killed.stderr, killed.stderr[-3000:]
    seed = output / "seed-0" / "seed"
    assert not is_finished(seed) and latest_checkpoint(seed).endswith("step_4")
    first = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "seed: train: 100%|" in first.stderr  # the job's bar shows each stage's own
    timings = json.loads((output / "timings.json").read_text())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    return output, timings, again.stdout + again.stderr
