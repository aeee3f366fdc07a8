"""ModeCLIPModel: routing against the paper's and the released equations, the ensemble, features, save/load."""

import math

import pytest
import torch
from helpers import EMBED_DIM, make_mode, make_tokenizer, tiny_clip_config
from transformers import AutoModel, CLIPModel, CLIPTextModelWithProjection

from modeling_mode import ModeCLIPConfig, ModeCLIPModel
from modeling_mode.configuration_mode_clip import text_tower_config

LABELS = ["a red circle", "a blue square", "a sneaker", "the digit seven", "a green triangle"]


def prompts(tokenizer, labels):
    return tokenizer([f"This is a photo of {label}." for label in labels], padding=True, return_tensors="pt")


def random_labels(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    return ["".join(letters[i] for i in torch.randint(len(letters), (12,), generator=generator)) for _ in range(n)]


@pytest.fixture
def pixel_values():
    return torch.randn(4, 3, 30, 30, generator=torch.Generator().manual_seed(1))


def class_embeddings(model, inputs):
    with torch.no_grad():
        embeds = model.router_text_model(**inputs).text_embeds
    return torch.nn.functional.normalize(embeds, dim=-1)


# Reference implementations, written from the equations one class and one expert at a time.
def reference_paper_weights(embeds, centroids, fine_to_coarse, num_experts, lam=0.2):
    n = len(embeds)
    if n > 200:
        lam = lam / math.log(n)
    scores = [0.0] * num_experts
    for e in embeds.tolist():
        sq = [sum((a - b) ** 2 for a, b in zip(e, mu)) for mu in centroids.tolist()]
        s = min(range(len(sq)), key=sq.__getitem__)
        a = math.exp(-sq[s] / lam) * (math.exp(0.5 - math.sqrt(n)) if n < 10 else 1.0)
        scores[fine_to_coarse[s]] += a
    z = sum(math.exp(x) for x in scores)
    return [math.exp(x) / z for x in scores]


def reference_released_weights(embeds, centroids, fine_to_coarse, num_experts, temperature=8.0):
    n = len(embeds)
    a = math.exp(0.5 - math.sqrt(n)) if n < 10 else 0.0
    b = 5 * math.log10(max(10, n - 200))
    scores = [0.0] * num_experts
    for e in embeds.tolist():
        d = [math.sqrt(sum((x - y) ** 2 for x, y in zip(e, mu))) for mu in centroids.tolist()]
        s = min(range(len(d)), key=d.__getitem__)
        scores[fine_to_coarse[s]] += math.exp(b * (a - d[s]))
    z = sum(math.exp(x / temperature) for x in scores)
    return [math.exp(x / temperature) / z for x in scores]


@pytest.mark.parametrize("num_labels", [3, 40, 230])
@pytest.mark.parametrize("routing", ["paper", "released"])
def test_routing_matches_the_equations(tokenizer, num_labels, routing):
    model = make_mode(num_experts=4, num_fine_clusters=16)
    # Centroids are used as stored: make them unnormalised and close to the class embeddings, so weights differ.
    inputs = prompts(tokenizer, random_labels(num_labels))
    embeds = class_embeddings(model, inputs)
    model.fine_centroids = 1.2 * embeds[torch.arange(16) % num_labels] + 0.05 * torch.randn(16, EMBED_DIM)
    reference = reference_paper_weights if routing == "paper" else reference_released_weights
    expected = reference(embeds, model.fine_centroids, model.config.fine_to_coarse, 4)

    weights = model.route(**inputs, routing=routing)

    torch.testing.assert_close(weights, torch.tensor(expected), rtol=1e-4, atol=1e-6)
    assert weights.min() >= 0 and math.isclose(weights.sum().item(), 1.0, rel_tol=1e-6)


def test_route_embeddings_normalises_template_averages(tokenizer):
    """The lower-level entry takes e.g. class embeddings averaged over prompt templates, as the paper does."""
    model = make_mode()
    inputs = prompts(tokenizer, LABELS)
    embeds = class_embeddings(model, inputs)
    torch.testing.assert_close(model.route_embeddings(3.0 * embeds), model.route(**inputs))


def test_remembered_route_follows_changes_to_the_router(tokenizer):
    """route() remembers the last task's weights; changing the centroids or the router must not return stale ones."""
    model = make_mode(num_experts=4, num_fine_clusters=16)
    inputs = prompts(tokenizer, LABELS)
    embeds = class_embeddings(model, inputs)
    model.fine_centroids = embeds[torch.arange(16) % len(LABELS)] + 0.1 * torch.randn(16, EMBED_DIM)
    first = model.route(**inputs)
    assert torch.equal(model.route(**inputs), first)
    with torch.no_grad():
        model.fine_centroids[:8] = -model.fine_centroids[:8]
    torch.testing.assert_close(model.route(**inputs), model.route_embeddings(embeds))
    assert not torch.allclose(model.route(**inputs), first)
    with torch.no_grad():
        model.router_text_model.text_projection.weight.mul_(-1)
    torch.testing.assert_close(model.route(**inputs), model.route_embeddings(-embeds))


def test_uniform_routing_is_the_mean_of_the_experts(tokenizer, pixel_values):
    model = make_mode(routing="uniform")
    inputs = prompts(tokenizer, LABELS)
    with torch.no_grad():
        out = model(**inputs, pixel_values=pixel_values)
        experts = [expert(**inputs, pixel_values=pixel_values).logits_per_image for expert in model.experts]
    torch.testing.assert_close(out.expert_weights, torch.full((3,), 1 / 3))
    torch.testing.assert_close(out.logits_per_image, torch.stack(experts).mean(0))
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())


def test_top1_routing_runs_exactly_one_expert(tokenizer, pixel_values):
    model = make_mode(router_top_k=1)
    calls = [0] * len(model.experts)
    for k, expert in enumerate(model.experts):
        expert.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
    inputs = prompts(tokenizer, LABELS)
    with torch.no_grad():
        out = model(**inputs, pixel_values=pixel_values)
    chosen = out.expert_weights.argmax().item()
    assert calls == [int(k == chosen) for k in range(3)]
    assert out.expert_weights.tolist() == [float(k == chosen) for k in range(3)]
    with torch.no_grad():
        expected = model.experts[chosen](**inputs, pixel_values=pixel_values).logits_per_image
    torch.testing.assert_close(out.logits_per_image, expected)


def test_one_expert_mode_reproduces_its_clip_model_exactly(tokenizer, pixel_values):
    model = make_mode(num_experts=1)
    inputs = prompts(tokenizer, LABELS)
    with torch.no_grad():
        ours = model(**inputs, pixel_values=pixel_values).logits_per_image
        theirs = model.experts[0](**inputs, pixel_values=pixel_values).logits_per_image
    assert torch.equal(ours, theirs)


def test_expert_logits_and_given_weights(tokenizer, pixel_values):
    model = make_mode()
    inputs = prompts(tokenizer, LABELS)
    weights = torch.tensor([0.5, 0.0, 0.5])
    with torch.no_grad():
        out = model(**inputs, pixel_values=pixel_values, expert_weights=weights, output_expert_logits=True)
    assert out.expert_logits_per_image.shape == (3, 4, len(LABELS))
    expected = (weights[:, None, None] * out.expert_logits_per_image).sum(0)
    torch.testing.assert_close(out.logits_per_image, expected)


def test_concatenated_features_give_the_weighted_sum_of_cosines(tokenizer, pixel_values):
    model = make_mode()
    inputs = prompts(tokenizer, LABELS)
    weights = torch.tensor([0.2, 0.0, 0.8])
    with torch.no_grad():
        text = model.get_text_features(**inputs, expert_weights=weights).pooler_output
        image = model.get_image_features(pixel_values, expert_weights=weights).pooler_output
        cosines = [
            out.logits_per_image / expert.logit_scale.exp()
            for out, expert in ((e(**inputs, pixel_values=pixel_values), e) for e in model.experts)
        ]
    assert text.shape == (len(LABELS), 3 * EMBED_DIM) and image.shape == (4, 3 * EMBED_DIM)
    torch.testing.assert_close(image @ text.t(), sum(w * c for w, c in zip(weights, cosines)))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))  # weights sum to 1: unit-norm features


@pytest.fixture(scope="module")
def saved_mode(tmp_path_factory):
    """A saved MODE whose centroids are the router embeddings of LABELS: each label is nearest to its own, far from
    the others, so the routing weights are uneven and half-precision embeddings pick the same nearest centroids."""
    model = make_mode(num_experts=3, num_fine_clusters=len(LABELS))
    model.config.fine_to_coarse = [0, 0, 0, 1, 2]
    model.fine_centroids = class_embeddings(model, prompts(make_tokenizer(), LABELS))
    path = tmp_path_factory.mktemp("saved") / "mode"
    model.save_pretrained(path)
    return path


# Half-precision tolerances against float32. Weights: the centroids stay float32 and each label sits on its own,
# so only the router tower's rounding moves them (measured < 1e-4). Logits (here between -3.5 and -0.5): each expert
# computes in the dtype's precision (fp16: 2**-11, bf16: 2**-8 relative); measured 0.007 and 0.05, allowed 3x and 2x.
HALF_LOGITS_ATOL = {torch.float16: 0.02, torch.bfloat16: 0.1}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_mode_routes_in_float32(saved_mode, tokenizer, dtype):
    full = AutoModel.from_pretrained(saved_mode).eval()
    half = AutoModel.from_pretrained(saved_mode, dtype=dtype).eval()
    inputs = prompts(tokenizer, LABELS)
    pixel_values = torch.randn(16, 3, 30, 30, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = full(**inputs, pixel_values=pixel_values)
        out = half(**inputs, pixel_values=pixel_values)  # routed: no expert_weights given

    assert half.experts[0].logit_scale.dtype == dtype and half.fine_centroids.dtype == torch.float32
    assert torch.equal(half.fine_centroids, full.fine_centroids)  # loaded, not computed: exact
    weights = half.route(**inputs)
    assert weights.dtype == torch.float32 and out.expert_weights.dtype == torch.float32
    assert expected.expert_weights.max() > 0.4  # uneven: a wrong route would show
    torch.testing.assert_close(weights, expected.expert_weights, atol=1e-3, rtol=0)
    atol = HALF_LOGITS_ATOL[dtype]
    assert out.logits_per_image.dtype == torch.float32
    torch.testing.assert_close(out.logits_per_image, expected.logits_per_image, atol=atol, rtol=0)
    # Within atol, an argmax can only change where float32's top two are closer than 2 * atol.
    top2 = expected.logits_per_image.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * atol
    assert clear.sum() >= 8
    assert torch.equal(out.logits_per_image.argmax(-1)[clear], expected.logits_per_image.argmax(-1)[clear])

    half.to(dtype)  # a cast of the whole model casts the centroids as well: routing still runs in float32
    assert half.fine_centroids.dtype == dtype
    torch.testing.assert_close(half.route(**inputs), expected.expert_weights, atol=1e-2, rtol=0)


def test_save_and_reload_with_auto_model(tmp_path, tokenizer, pixel_values):
    model = make_mode(routing="released", router_top_k=2)
    model.save_pretrained(tmp_path)
    assert {"model.safetensors", "modeling_mode_clip.py", "configuration_mode_clip.py", "routing.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert reloaded.config.auto_map["AutoModelForZeroShotImageClassification"] == "modeling_mode_clip.ModeCLIPModel"
    assert (reloaded.config.routing, reloaded.config.router_top_k) == ("released", 2)
    inputs = prompts(tokenizer, LABELS)
    with torch.no_grad():
        before = model(**inputs, pixel_values=pixel_values)
        after = reloaded(**inputs, pixel_values=pixel_values)
    # The stored tensors come back exactly. What they compute is compared with a tolerance: the same kernels may
    # round differently on differently aligned copies of the weights (MKL does, without its reproducibility mode).
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert state.keys() == reloaded_state.keys()
    assert all(torch.equal(state[name], reloaded_state[name]) for name in state)
    torch.testing.assert_close(before.expert_weights, after.expert_weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(before.logits_per_image, after.logits_per_image, rtol=0, atol=1e-5)


# Bad input: each a ValueError that names the problem.
def experts_and_router(num_experts=2):
    config = tiny_clip_config()
    return [CLIPModel(config) for _ in range(num_experts)], CLIPTextModelWithProjection(text_tower_config(config))


def test_centroid_dimension_must_match_the_router():
    experts, router = experts_and_router()
    with pytest.raises(ValueError, match="router text model's embedding size"):
        ModeCLIPModel.from_experts(experts, torch.randn(4, EMBED_DIM + 1), [0, 1, 0, 1], router)


def test_fine_to_coarse_ids_and_length_are_checked():
    experts, router = experts_and_router()
    with pytest.raises(ValueError, match=r"expert ids \[2\] outside"):
        ModeCLIPModel.from_experts(experts, torch.randn(4, EMBED_DIM), [0, 1, 2, 1], router)
    with pytest.raises(ValueError, match="fine_to_coarse has 3 entries but num_fine_clusters is 4"):
        ModeCLIPModel.from_experts(experts, torch.randn(4, EMBED_DIM), [0, 1, 0], router)


def test_experts_must_share_one_config():
    experts, router = experts_and_router()
    experts[1] = CLIPModel(tiny_clip_config(logit_scale_init_value=1.0))
    with pytest.raises(ValueError, match="expert 1 has a different config"):
        ModeCLIPModel.from_experts(experts, torch.randn(4, EMBED_DIM), [0, 1, 0, 1], router)


def test_nan_centroids_are_rejected():
    experts, router = experts_and_router()
    centroids = torch.randn(4, EMBED_DIM)
    centroids[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ModeCLIPModel.from_experts(experts, centroids, [0, 1, 0, 1], router)


def test_empty_label_list_is_rejected(tokenizer):
    model = make_mode()
    with pytest.raises(ValueError, match="empty label list"):
        model.route(torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="n_classes > 0"):
        model.route_embeddings(torch.zeros(0, EMBED_DIM))


@pytest.mark.parametrize("top_k", [0, 4])
def test_router_top_k_must_be_between_one_and_the_number_of_experts(top_k):
    with pytest.raises(ValueError, match=r"router_top_k must be None or in \[1, num_experts=3\]"):
        ModeCLIPConfig(expert_config=tiny_clip_config(), num_experts=3, router_top_k=top_k)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5, 0.5], r"expert_weights must have shape \[3\], got \[2\]"),
        ([1.0, -0.5, 0.5], r"must be finite and non-negative"),
        ([0.0, 0.0, 0.0], r"must sum to one \(within 0.01\), got \[0.0, 0.0, 0.0\] summing to 0"),
        ([2.0, 6.0, 0.0], r"must sum to one \(within 0.01\), got \[2.0, 6.0, 0.0\] summing to 8: divide"),
        ([0.5, 0.6, 0.0], r"summing to 1.1: divide them by their sum"),
    ],
)
def test_expert_weights_are_checked(tokenizer, pixel_values, weights, message):
    model = make_mode()
    inputs = prompts(tokenizer, LABELS)
    with pytest.raises(ValueError, match=message):
        model(**inputs, pixel_values=pixel_values, expert_weights=torch.tensor(weights))
    with pytest.raises(ValueError, match=message):
        model.get_text_features(**inputs, expert_weights=torch.tensor(weights))


def test_weights_rounded_to_bfloat16_are_accepted(tokenizer, pixel_values):
    model = make_mode()
    inputs = prompts(tokenizer, LABELS)
    weights = torch.full((3,), 1 / 3).bfloat16()  # 0.333984375 each: they sum to 1.002
    with torch.no_grad():
        out = model(**inputs, pixel_values=pixel_values, expert_weights=weights)
    torch.testing.assert_close(out.expert_weights, weights.float())


@pytest.mark.parametrize("missing", ["input_ids", "pixel_values"])
def test_forward_names_what_it_needs(tokenizer, pixel_values, missing):
    model = make_mode()
    inputs = {**prompts(tokenizer, LABELS), "pixel_values": pixel_values, missing: None}
    with pytest.raises(ValueError, match=rf"forward needs input_ids .* and pixel_values .*, got no {missing}\. For "):
        model(**inputs)
