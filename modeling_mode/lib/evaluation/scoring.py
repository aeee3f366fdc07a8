"""Scoring a dual encoder (`CLIPModel`, `MetaClip2Model`, `SiglipModel`, `Siglip2Model`) or a MODE of them:
zero-shot classification and image-text retrieval.

Every expert encodes the images and texts once; the ensembles (routed with the paper's formula, with the released
one, uniform) and each expert alone are then combinations of the experts' logits, as in MODE:
`logits = sum_k w_k * (exp(logit_scale_k) * cos_k + logit_bias_k)`, the bias SigLIP's (0 for CLIP's families). A
single model is a MODE of one expert with weight one.

The metrics are `evaluate` modules kept in this package (`metrics/`), loaded by path: no Hub, so offline too.
"""

import functools
import numbers
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from ...configuration_mode_clip import ROUTINGS
from ...families import Family, family_of
from ...modeling_mode_clip import ModeCLIPModel
from ..core.errors import InputError
from ..core.status import ProgressBar
from .outputs import CLIP_NAME, EXPERT_NAME, MODE_NAME


def experts_of(model) -> list:
    if isinstance(model, ModeCLIPModel):
        return [model.expert(k) for k in range(model.config.num_experts)]
    if isinstance(model, PreTrainedModel):
        try:
            family_of(model.config)
        except ValueError as error:  # a model of another kind: named, with the families
            raise InputError(str(error)) from error
        return [model]
    raise InputError(f"expected a dual encoder or a MODE of them, got {type(model).__name__}.")


def family(model) -> Family:
    return model.config.expert_family if isinstance(model, ModeCLIPModel) else family_of(model.config)


def text_padding(model) -> dict:
    """How the experts' texts are padded: SigLIP's to their context (its text tower pools the last position)."""
    if family(model).padding == "max_length":
        return {"padding": "max_length", "max_length": experts_of(model)[0].config.text_config.max_position_embeddings}
    return {"padding": True}


def _batches(items: list, batch_size: int) -> Iterable[list]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def on_cpu(features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A batch's features (a list: each expert's, stacked) as float32 on the CPU, where the ensembles are combined."""
    return (torch.stack(features) if isinstance(features, list) else features).float().cpu()


@torch.inference_mode()
def encode_texts(
    model, tokenizer, texts: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised text features of every expert [K, T, d] and, for a MODE, router embeddings [T, d_router].

    Both are float32 on the CPU whatever the model's dtype and device.
    """
    per_expert, routed = [], []
    for batch in _batches(texts, batch_size):
        inputs = tokenizer(batch, truncation=True, return_tensors="pt", **text_padding(model)).to(model.device)
        clip_inputs = {name: inputs[name] for name in ("input_ids", "attention_mask")}  # a router's ids beside them
        per_expert.append(
            on_cpu([expert.get_text_features(**clip_inputs).pooler_output for expert in experts_of(model)])
        )
        if isinstance(model, ModeCLIPModel):
            routed.append(on_cpu(model.embed_task(*model.router_inputs(**inputs))))
    features = nn.functional.normalize(torch.cat(per_expert, dim=1), dim=-1)
    return features, nn.functional.normalize(torch.cat(routed), dim=-1) if routed else None


@torch.inference_mode()
def encode_images(model, image_processor, images: Iterable, num_images: int, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised image features of every expert [K, N, d], float32 on the CPU; each batch is preprocessed once
    for all experts."""
    per_expert = []
    with ProgressBar(total=num_images, desc="images", unit="img") as progress:
        for batch in images:
            # pixel_values, and SigLIP 2's patch mask and grid sizes
            inputs = image_processor(images=batch, return_tensors="pt").to(model.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            per_expert.append(on_cpu([e.get_image_features(**inputs).pooler_output for e in experts_of(model)]))
            progress.update(len(batch))
    return nn.functional.normalize(torch.cat(per_expert, dim=1), dim=-1)


def logit_scales(model) -> torch.Tensor:
    """Each expert's exp(logit_scale) [K]."""
    return torch.stack([expert.logit_scale.detach().exp().float().reshape(()) for expert in experts_of(model)]).cpu()


def logit_biases(model) -> torch.Tensor:
    """Each expert's logit bias [K]: SigLIP's learned one, 0 for CLIP and MetaCLIP 2."""
    experts = experts_of(model)
    if not family(model).has_logit_bias:
        return torch.zeros(len(experts))
    return torch.stack([expert.logit_bias.detach().float().reshape(()) for expert in experts]).cpu()


def expert_logits(model, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Each expert's logits [K, N, T] from its normalised features [K, N, d] and [K, T, d]: exp(s_k) cos_k + b_k."""
    cosines = torch.einsum("knd,ktd->knt", image_features, text_features)
    return logit_scales(model)[:, None, None] * cosines + logit_biases(model)[:, None, None]


def ensembles(model, router_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Named expert-weight vectors to compare: the routings of a MODE and each expert alone."""
    num_experts = len(experts_of(model))
    if not isinstance(model, ModeCLIPModel):
        return {CLIP_NAME: torch.ones(1)}
    named = {
        MODE_NAME.format(routing=routing): model.route_embeddings(router_embeds, routing=routing).cpu()
        for routing in ROUTINGS
    }
    named.update(
        {
            EXPERT_NAME.format(k=k): nn.functional.one_hot(torch.tensor(k), num_experts).float()
            for k in range(num_experts)
        }
    )
    return named


def zero_shot_classifier(
    model, tokenizer, classnames: list[str], templates
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each expert's class embeddings averaged over the templates [K, C, d], and the router's [C, d_router]."""
    prompts = [template.format(c=name) for name in classnames for template in templates]
    features, routed = encode_texts(model, tokenizer, prompts)

    def average_over_templates(x):
        return nn.functional.normalize(x.unflatten(-2, (len(classnames), len(templates))).mean(-2), dim=-1)

    return average_over_templates(features), average_over_templates(routed) if routed is not None else None


METRICS = Path(__file__).resolve().parent / "metrics"


@functools.cache
def metric(name: str):
    """The `evaluate` module `metrics/<name>/<name>.py` of this package, loaded by its path: never from the Hub."""
    import evaluate

    return evaluate.load(str(METRICS / name), keep_in_memory=True)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy, and mean per-class accuracy (CLIP's metric for e.g. Pets, Flowers, Aircraft).

    The metric takes each image's 5 best classes, not all its logits: enough for every accuracy it computes.
    """
    ranked = logits.topk(min(5, logits.shape[-1])).indices
    return metric("zero_shot_accuracy").compute(predictions=ranked.numpy(), references=labels.numpy())


def zero_shot_classification(
    model, tokenizer, image_processor, images: Iterable, labels: list[int], classnames: list[str], templates=None
) -> dict:
    """Zero-shot accuracy of every ensemble and expert on `images` (batches of PIL images) with true `labels`.

    `templates` default to `DEFAULT_TEMPLATES`; an empty list is refused, as is a label without a class name.
    """
    check_labels(labels, classnames)
    templates = prompt_templates(templates)
    image_features = encode_images(model, image_processor, images, len(labels))
    weights, results = classify(model, tokenizer, image_features, torch.as_tensor(labels), classnames, templates)
    return {
        "task": "zero-shot-image-classification",
        "num_images": len(labels),
        "num_classes": len(classnames),
        "num_templates": len(templates),
        "routing_weights": {name: w.tolist() for name, w in weights.items() if name.startswith("MODE")},
        "results": results,
    }


def classify(
    model, tokenizer, image_features: torch.Tensor, labels: torch.Tensor, classnames: list[str], templates: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(each ensemble's and expert's weights, their metrics) on images already encoded ([K, N, d], `encode_images`):
    the class prompts are embedded here, so one encoding of the images serves any number of template sets."""
    class_features, router_embeds = zero_shot_classifier(model, tokenizer, classnames, templates)
    logits = expert_logits(model, image_features, class_features)  # [K, N, C]
    weights = ensembles(model, router_embeds)
    return weights, {
        name: classification_metrics(torch.einsum("k,knc->nc", w, logits), labels) for name, w in weights.items()
    }


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Share of queries (rows of `scores`) with a relevant item (True in `relevant`) among their k best."""
    ranked = scores.topk(min(max(ks), scores.shape[1])).indices
    relevant_items = [row.nonzero().flatten().numpy() for row in relevant]
    return metric("retrieval_recall").compute(predictions=ranked.numpy(), references=relevant_items, k=ks)


def retrieval(model, tokenizer, image_processor, images: Iterable, captions: list[list[str]]) -> dict:
    """Image-to-text and text-to-image recall@1/5/10; `captions[i]` are image i's captions.

    As in the paper, image-to-text routes once with the whole caption set as the task, and text-to-image routes each
    query caption on its own.
    """
    texts = [caption for image_captions in captions for caption in image_captions]
    owner = torch.tensor([i for i, image_captions in enumerate(captions) for _ in image_captions])
    text_features, router_embeds = encode_texts(model, tokenizer, texts)
    image_features = encode_images(model, image_processor, images, len(captions))
    logits = expert_logits(model, image_features, text_features)  # [K, images, texts]
    relevant = owner[None, :] == torch.arange(len(captions))[:, None]  # [images, texts]

    results = {}
    for name, task_weights in ensembles(model, router_embeds).items():
        if name == "MODE uniform" or not name.startswith("MODE"):
            per_query = task_weights.expand(len(texts), -1)
        else:  # each caption is a task of its own
            routing = name.split()[-1]
            per_query = torch.stack([model.route_embeddings(e[None], routing=routing).cpu() for e in router_embeds])
        image_to_text = torch.einsum("k,knt->nt", task_weights, logits)
        text_to_image = torch.einsum("tk,knt->tn", per_query, logits)
        results[name] = {
            **{f"image_to_text_{m}": v for m, v in recall_at_k(image_to_text, relevant).items()},
            **{f"text_to_image_{m}": v for m, v in recall_at_k(text_to_image, relevant.t()).items()},
        }
    return {"task": "image-text-retrieval", "num_images": len(captions), "num_texts": len(texts), "results": results}


# A short, general set of CLIP prompt templates; name a benchmark's set (`strings_from`) or pass your own for one.
DEFAULT_TEMPLATES = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a photo of the small {c}.",
    "a photo of the large {c}.",
    "a drawing of a {c}.",
    "a close-up photo of a {c}.",
    "itap of a {c}.",
)


def prompt_templates(templates: list[str] | None) -> list[str]:
    """The templates (the defaults for None), each checked to take the class name as {c} and nothing else."""
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if not templates:
        raise InputError("no prompt templates: give at least one, with {c} where the class name goes.")
    for template in templates:
        try:
            template.format(c="")
        except (KeyError, IndexError, ValueError) as error:
            raise InputError(
                f"prompt template {template!r} has a field other than {{c}} ({type(error).__name__}: {error}); "
                "write literal braces as {{ and }}."
            ) from error
        if "{c}" not in template:
            raise InputError(f"prompt template {template!r} has no {{c}}, where the class name goes.")
    return list(templates)


def check_labels(labels: list[int], classnames: list[str]) -> None:
    """Every label must be the index of a class name; class names must be there, and tell the classes apart."""
    check_classnames(classnames)
    for row, label in enumerate(labels):
        if not isinstance(label, numbers.Integral) or not 0 <= label < len(classnames):
            raise InputError(
                f"row {row} has label {label!r}, which is not a class id: there are {len(classnames)} class names, "
                f"so labels go from 0 to {len(classnames) - 1} (give one class name per label id)."
            )


def check_classnames(classnames: list[str]) -> None:
    """At least one class name, none empty and none twice: a prompt without its class, or two classes of one name,
    would be scored as if they named something (the router too would weigh the name twice)."""
    if not classnames:
        raise InputError("zero-shot classification needs at least one class name.")
    if empty := [index for index, name in enumerate(classnames) if not name.strip()]:
        raise InputError(f"class names {empty} (by label id) are empty: give every class a name.")
    seen: dict[str, list[int]] = {}
    for index, name in enumerate(classnames):
        seen.setdefault(name.strip(), []).append(index)
    if twice := {name: ids for name, ids in seen.items() if len(ids) > 1}:
        named = "; ".join(f"{name!r} (label ids {ids})" for name, ids in list(twice.items())[:5])
        raise InputError(f"class names appear more than once: {named}. Each class needs a name of its own.")
