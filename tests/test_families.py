"""MODEs of every expert family (CLIP, MetaCLIP 2, SigLIP, SigLIP 2) and of LoRA experts sharing one seed: the
ensemble follows each family's logits, the pipeline gives each family's scores, and a saved MODE loads in a fresh
Python without this package."""

import numpy as np
import pytest
import torch
from fresh_python import assert_loads_without_package
from helpers import family_image_processor, family_mode, make_tokenizer, tiny_clip_config, tiny_family_config
from PIL import Image
from transformers import AutoModel, BertConfig, BertModel, CLIPModel, CLIPProcessor, Siglip2Processor, SiglipProcessor

from modeling_mode import ModeCLIPConfig, ModeCLIPModel, ModeSiglipModel
from modeling_mode.adapters import adapted_layers
from modeling_mode.families import FAMILIES, text_tower_config
from modeling_mode.lib.clustering.embedding import CaptionEncoder
from modeling_mode.lib.growth.outputs import expert_digests
from modeling_mode.lib.growth.run import grown, shrink
from modeling_mode.modeling_mode_clip import router_from_config

LABELS = ["a red circle", "a blue square", "a sneaker"]
PROCESSORS = {
    "clip": CLIPProcessor,
    "metaclip_2": CLIPProcessor,
    "siglip": SiglipProcessor,
    "siglip2": Siglip2Processor,
}


def family_inputs(family: str, num_images=3):
    pixels = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(num_images)]
    images = [Image.fromarray(array) for array in pixels]
    # SigLIP pools its text tower's last position: its texts are padded to the context, as the pipeline pads them.
    siglip = FAMILIES[family].padding == "max_length"
    padding = {"padding": "max_length", "max_length": 64} if siglip else {"padding": True}
    texts = make_tokenizer()([f"This is a photo of {label}." for label in LABELS], return_tensors="pt", **padding)
    return dict(texts, **family_image_processor(family)(images=images, return_tensors="pt"))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_ensembles_its_own_logits(family):
    model = family_mode(family)
    inputs = family_inputs(family)
    with torch.no_grad():
        output = model(**inputs, expert_weights=torch.tensor([0.3, 0.7]))
        expected = 0
        for k, weight in enumerate((0.3, 0.7)):
            expert = model.expert(k)
            image_inputs = {
                name: value for name, value in inputs.items() if name not in ("input_ids", "attention_mask")
            }
            image = torch.nn.functional.normalize(expert.get_image_features(**image_inputs).pooler_output, dim=-1)
            text = expert.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            cos = image @ torch.nn.functional.normalize(text.pooler_output, dim=-1).t()
            bias = expert.logit_bias if FAMILIES[family].has_logit_bias else 0.0  # exp(s_k) cos_k (+ b_k)
            expected = expected + weight * (expert.logit_scale.exp() * cos + bias)
    torch.testing.assert_close(output.logits_per_image, expected, rtol=0, atol=1e-5)
    assert isinstance(model, ModeSiglipModel) == FAMILIES[family].has_logit_bias
    assert model.config.model_type == ("mode_siglip" if FAMILIES[family].has_logit_bias else "mode_clip")
    assert model.config.expert_family.model_type == family


def test_experts_of_two_families_are_refused():
    clip, siglip = family_mode("clip"), family_mode("siglip")
    router = clip.router_text_model
    with pytest.raises(ValueError, match="different config from expert 0"):
        ModeCLIPModel.from_experts([clip.expert(0), siglip.expert(0)], clip.fine_centroids, [0, 1, 0, 1], router)


def test_an_unsupported_family_is_refused_naming_the_supported_ones():
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37))
    router = family_mode("clip").router_text_model
    with pytest.raises(ValueError, match=r"'bert' models are not a MODE expert family.*SigLIP 2 \(siglip2\)"):
        ModeCLIPModel.from_experts([bert], torch.zeros(2, 16), [0, 0], router)
    with pytest.raises(ValueError, match="do not go in a ModeCLIPConfig.*for_experts"):
        ModeCLIPConfig(expert_config=tiny_family_config("siglip"))


# ------------------------------------------------------------------------------------------------- LoRA experts


def lora_mode(num_experts=3, rank=2, alpha=4.0, seed=0):
    """A MODE of LoRA experts on one tiny CLIP seed, with random adapters; and each expert merged into a CLIPModel."""
    torch.manual_seed(seed)
    config = tiny_clip_config()
    seed_model = CLIPModel(config).eval()
    merged = [CLIPModel(config).eval() for _ in range(num_experts)]
    targets = ["q_proj", "v_proj", "fc1"]
    adapters = []
    for expert in merged:
        expert.load_state_dict(seed_model.state_dict())
        expert_adapters = {}
        for name, module in seed_model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                lora_a = 0.1 * torch.randn(rank, module.in_features)
                lora_b = 0.1 * torch.randn(module.out_features, rank)
                expert_adapters[name] = (lora_a, lora_b)
                with torch.no_grad():
                    expert.get_submodule(name).weight += (alpha / rank) * lora_b @ lora_a
        adapters.append(expert_adapters)
    router = router_from_config(text_tower_config(config)).eval()
    centroids = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    settings = {"rank": rank, "alpha": alpha, "target_modules": targets}
    fine_to_coarse = [k % num_experts for k in range(6)]
    model = ModeCLIPModel.from_lora_experts(seed_model, adapters, settings, centroids, fine_to_coarse, router)
    return model.eval(), merged


def test_lora_experts_compute_what_their_merged_weights_compute(tmp_path):
    model, merged = lora_mode()
    inputs = family_inputs("clip")
    with torch.no_grad():
        output = model(**inputs, output_expert_logits=True)
        for k, expert in enumerate(merged):
            expected = expert(**inputs).logits_per_image
            torch.testing.assert_close(output.expert_logits_per_image[k], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(output.expert_logits_per_image[0], output.expert_logits_per_image[1])
    standalone = model.expert_model(2)  # merged into a copy of the seed: a plain CLIPModel, as PEFT would merge it
    assert type(standalone) is CLIPModel and not adapted_layers(standalone)
    with torch.no_grad():
        torch.testing.assert_close(standalone(**inputs).logits_per_image, merged[2](**inputs).logits_per_image,
                                   rtol=0, atol=1e-5)  # fmt: skip

    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert state.keys() == reloaded_state.keys() and all(torch.equal(state[k], reloaded_state[k]) for k in state)
    # The seed's weights once, and per expert only its adapters.
    seed_size = sum(p.numel() for p in merged[0].parameters())
    adapter_size = sum(a.numel() + b.numel() for a, b in model.expert_adapters(0).values())
    stored = sum(tensor.numel() for name, tensor in state.items() if not name.startswith(("router_", "fine_")))
    assert stored == seed_size + 3 * adapter_size


def test_lora_adapters_of_other_shapes_or_layers_are_refused():
    model, _ = lora_mode()
    seed, router = model.seed_model, model.router_text_model
    adapters = [model.expert_adapters(k) for k in range(3)]
    settings = {"rank": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj", "fc1"]}
    centroids, fine_to_coarse = model.fine_centroids, model.config.fine_to_coarse
    wrong_rank = {**settings, "rank": 3}
    with pytest.raises(ValueError, match="has shapes .* not .*rank 3"):
        ModeCLIPModel.from_lora_experts(
            CLIPModel(seed.config), adapters, wrong_rank, centroids, fine_to_coarse, router
        )
    fewer = {**settings, "target_modules": ["q_proj"]}
    with pytest.raises(ValueError, match="adapters of layers the LoRA settings do not target"):
        ModeCLIPModel.from_lora_experts(CLIPModel(seed.config), adapters, fewer, centroids, fine_to_coarse, router)


# ------------------------------------------------------------------------------ a fresh Python without this package


@pytest.mark.slow
@pytest.mark.parametrize("family", [*FAMILIES, "clip-lora"])
def test_every_family_loads_with_auto_classes_and_the_pipeline_in_a_fresh_python(family, tmp_path):
    if family == "clip-lora":
        model, _ = lora_mode()
        family = "clip"
    else:
        model = family_mode(family)
    tokenizer, image_processor = make_tokenizer(), family_image_processor(family)
    model.save_pretrained(tmp_path / "mode")
    PROCESSORS[family](image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path / "mode")

    loaded = assert_loads_without_package(str(tmp_path / "mode"), model, tokenizer, image_processor, tmp_path)
    assert loaded["processor"] == PROCESSORS[family].__name__


@pytest.mark.parametrize("family", FAMILIES)
def test_the_text_tower_of_a_saved_expert_embeds_as_the_expert_does(family, tmp_path):
    expert = family_mode(family).expert(0)
    expert.save_pretrained(tmp_path / "expert")
    make_tokenizer().save_pretrained(tmp_path / "expert")
    encoder = CaptionEncoder(str(tmp_path / "expert"), device="cpu")
    captions = ["a red circle", "a much longer caption of a blue square"]
    tokens = make_tokenizer()(captions, return_tensors="pt", **encoder.padding or {"padding": True})
    with torch.no_grad():
        expected = torch.nn.functional.normalize(expert.get_text_features(**tokens).pooler_output, dim=-1)
    assert encoder.pooling == "projection" and encoder.embed_dim == expected.shape[1]
    torch.testing.assert_close(torch.from_numpy(encoder.encode(captions)), expected, rtol=0, atol=1e-5)


def test_a_lora_mode_shrinks_and_grows_by_its_adapters(tmp_path):
    model, merged = lora_mode(num_experts=3)
    model.save_pretrained(tmp_path / "mode")
    shrunk_path = shrink(str(tmp_path / "mode"), 1, "its data left", str(tmp_path / "shrunk"))
    shrunk = AutoModel.from_pretrained(shrunk_path, trust_remote_code=True).eval()
    assert (
        shrunk.config.num_experts == 2
        and shrunk.seed_model.text_model.encoder.layers[0].self_attn.q_proj.lora_A.shape[0] == 2
    )
    assert expert_digests(shrunk_path) == [expert_digests(tmp_path / "mode")[k] for k in (0, 2)]
    inputs = family_inputs("clip")
    with torch.no_grad():
        for k, original in ((0, 0), (1, 2)):  # the experts after the one removed move up
            expected = merged[original](**inputs).logits_per_image
            torch.testing.assert_close(shrunk.expert(k)(**inputs).logits_per_image, expected, rtol=0, atol=1e-5)

    new_adapters = lora_mode(num_experts=1, seed=5)[0].expert_adapters(0)  # another seed's: adapters that fit it
    grown_model = grown(shrunk, [new_adapters], torch.randn(2, 16), [0, 0], {"change": "added experts"}, [{}])
    assert grown_model.config.num_experts == 3 and grown_model.config.fine_to_coarse[-2:] == [2, 2]
    for name, (lora_a, lora_b) in grown_model.expert_adapters(2).items():
        assert torch.equal(lora_a, new_adapters[name][0]) and torch.equal(lora_b, new_adapters[name][1])
    for k in range(2):  # the old experts' adapters as they were
        for name, (lora_a, _) in grown_model.expert_adapters(k).items():
            assert torch.equal(lora_a, shrunk.expert_adapters(k)[name][0])
