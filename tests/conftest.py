"""The suite's fixtures: tiny random CLIP parts built here (tests/helpers.py), no downloads."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from helpers import make_image_processor, make_tokenizer, reset_accelerate_state, tiny_clip_config
from transformers import CLIPModel


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
