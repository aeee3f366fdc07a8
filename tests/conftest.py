"""Tiny random CLIP experts, a tokenizer and an image processor built here: no downloads."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from modeling_mode import ModeCLIPModel
from modeling_mode.configuration_mode_clip import text_tower_config
from modeling_mode.lib.processors import char_level_tokenizer, pil_image_processor

IMAGE_SIZE = 30
EMBED_DIM = 16


def tiny_clip_config(**overrides) -> CLIPConfig:
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(tower, vocab_size=600, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(tower, image_size=IMAGE_SIZE, patch_size=10)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED_DIM, **overrides)


def make_tokenizer() -> CLIPTokenizer:
    return char_level_tokenizer(model_max_length=64)


def make_image_processor():
    return pil_image_processor(IMAGE_SIZE)


def make_mode(num_experts=3, num_fine_clusters=12, seed=0, **router_settings) -> ModeCLIPModel:
    torch.manual_seed(seed)
    config = tiny_clip_config()
    experts = [CLIPModel(config).eval() for _ in range(num_experts)]
    router = CLIPTextModelWithProjection(text_tower_config(config)).eval()
    centroids = torch.nn.functional.normalize(torch.randn(num_fine_clusters, EMBED_DIM), dim=-1)
    fine_to_coarse = torch.randint(num_experts, (num_fine_clusters,)).tolist()
    return ModeCLIPModel.from_experts(experts, centroids, fine_to_coarse, router, **router_settings).eval()


def reset_accelerate_state():
    """Accelerate's state is a process-wide singleton: a run in this process must not hand its own to the next."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


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
