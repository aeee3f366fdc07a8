"""Zero-shot classification and image-text retrieval for a `CLIPModel` or a `ModeCLIPModel`.

Every expert encodes the images and texts once; the ensembles (routed with the paper's formula, with the released
one, uniform) and each expert alone are then combinations of the experts' cosine similarities, as in MODE:
`logits = sum_k w_k * exp(logit_scale_k) * cos_k`. A `CLIPModel` is a MODE of one expert with weight one.
"""

import argparse
import importlib.util
import json
import numbers
import os
import reprlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy
from tqdm.auto import tqdm
from transformers import CLIPModel

from ..configuration_mode_clip import ROUTINGS
from ..modeling_mode_clip import ModeCLIPModel
from .errors import InputError, check_output_file, check_weight_files, naming_failures
from .files import write_json, write_text

# The `model_type`s the evaluators score: a CLIPModel and a ModeCLIPModel, whose code transformers and this package
# provide. A model of another type runs the Python code its repo ships, which needs --trust-remote-code.
MODEL_TYPES = ("clip", "mode_clip")
TEMPLATES = "zeroshot_classification_templates"  # clip-benchmark's name for the prompt templates

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


def strings_from(value: str, what: str) -> list[str]:
    """A JSON file holding a list of strings, or the name of a data set whose `what` clip-benchmark publishes.

    `what` is "classnames" or "zeroshot_classification_templates": e.g. `imagenet1k` names OpenAI's 80 ImageNet
    templates and readable ImageNet class names, `cifar10` CLIP's CIFAR-10 templates. clip-benchmark is read as data
    (`pip install --no-deps clip-benchmark`: it is only needed for its JSON files), so nothing of it is imported.
    """
    strings = _json_file(value, what) if value.endswith(".json") or Path(value).is_file() else _named_set(value, what)
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise InputError(f"{value} must hold a JSON list of strings ({what}).")
    if not strings:
        raise InputError(f"{value} holds an empty list: give at least one ({what}).")
    return strings


def _json_file(path: str, what: str):
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise InputError(f"{path!r} ({what}) cannot be read: {error.strerror or error}.") from error
    except ValueError as error:  # not JSON, or not text at all
        raise InputError(f"{path} is not JSON ({error}): it must hold a JSON list of strings ({what}).") from error


def _named_set(name: str, what: str):
    package = importlib.util.find_spec("clip_benchmark")
    if package is None:
        raise InputError(
            f"{name!r} is not a file, and named {what} sets come from clip-benchmark: "
            "pip install --no-deps clip-benchmark, or pass a JSON file."
        )
    named = json.loads((Path(package.origin).parent / "datasets" / f"en_{what}.json").read_text())
    if name not in named:
        raise InputError(f"clip-benchmark has no {what} for {name!r}; it has: {', '.join(sorted(named))}.")
    return named[name]


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
    """Every label must be the index of a class name."""
    if not classnames:
        raise InputError("zero-shot classification needs at least one class name.")
    for row, label in enumerate(labels):
        if not isinstance(label, numbers.Integral) or not 0 <= label < len(classnames):
            raise InputError(
                f"row {row} has label {label!r}, which is not a class id: there are {len(classnames)} class names, "
                f"so labels go from 0 to {len(classnames) - 1} (give one class name per label id)."
            )


def experts_of(model) -> list[CLIPModel]:
    if isinstance(model, ModeCLIPModel):
        return list(model.experts)
    if isinstance(model, CLIPModel):
        return [model]
    raise InputError(f"expected a CLIPModel or a ModeCLIPModel, got {type(model).__name__}.")


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
        inputs = tokenizer(batch, padding=True, truncation=True, return_tensors="pt").to(model.device)
        per_expert.append(on_cpu([expert.get_text_features(**inputs).pooler_output for expert in experts_of(model)]))
        if isinstance(model, ModeCLIPModel):
            routed.append(on_cpu(model.router_text_model(**inputs).text_embeds))
    features = nn.functional.normalize(torch.cat(per_expert, dim=1), dim=-1)
    return features, nn.functional.normalize(torch.cat(routed), dim=-1) if routed else None


@torch.inference_mode()
def encode_images(model, image_processor, images: Iterable, num_images: int, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised image features of every expert [K, N, d], float32 on the CPU; each batch is preprocessed once
    for all experts."""
    per_expert = []
    with tqdm(total=num_images, desc="images", unit="img") as progress:
        for batch in images:
            pixel_values = image_processor(images=batch, return_tensors="pt").pixel_values.to(
                model.device, model.dtype
            )
            per_expert.append(on_cpu([e.get_image_features(pixel_values).pooler_output for e in experts_of(model)]))
            progress.update(len(batch))
    return nn.functional.normalize(torch.cat(per_expert, dim=1), dim=-1)


def logit_scales(model) -> torch.Tensor:
    return torch.stack([expert.logit_scale.detach().exp().float() for expert in experts_of(model)]).cpu()


def ensembles(model, router_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Named expert-weight vectors to compare: the routings of a MODE and each expert alone."""
    num_experts = len(experts_of(model))
    if not isinstance(model, ModeCLIPModel):
        return {"CLIPModel": torch.ones(1)}
    named = {f"MODE {routing}": model.route_embeddings(router_embeds, routing=routing).cpu() for routing in ROUTINGS}
    named.update(
        {f"expert {k}": nn.functional.one_hot(torch.tensor(k), num_experts).float() for k in range(num_experts)}
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


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy, and mean per-class accuracy (CLIP's metric for e.g. Pets, Flowers, Aircraft)."""
    num_classes = logits.shape[-1]

    def accuracy(top_k, average):
        return multiclass_accuracy(logits, labels, num_classes=num_classes, top_k=top_k, average=average)

    # Mean over the classes present in `labels`: torchmetrics' "macro" also counts classes that are only predicted.
    present = torch.bincount(labels, minlength=num_classes) > 0
    return {
        "top1": accuracy(1, "micro").item(),
        "top5": accuracy(min(5, num_classes), "micro").item(),
        "mean_per_class": accuracy(1, "none")[present].mean().item(),
    }


def zero_shot_classification(
    model, tokenizer, image_processor, images: Iterable, labels: list[int], classnames: list[str], templates=None
) -> dict:
    """Zero-shot accuracy of every ensemble and expert on `images` (batches of PIL images) with true `labels`.

    `templates` default to `DEFAULT_TEMPLATES`; an empty list is refused, as is a label without a class name.
    """
    check_labels(labels, classnames)
    templates = prompt_templates(templates)
    class_features, router_embeds = zero_shot_classifier(model, tokenizer, classnames, templates)
    image_features = encode_images(model, image_processor, images, len(labels))
    # [K, N, C]: each expert's scaled cosine similarities
    expert_logits = logit_scales(model)[:, None, None] * torch.einsum("knd,kcd->knc", image_features, class_features)
    labels = torch.as_tensor(labels)
    weights = ensembles(model, router_embeds)
    return {
        "task": "zero-shot-image-classification",
        "num_images": len(labels),
        "num_classes": len(classnames),
        "num_templates": len(templates),
        "routing_weights": {name: w.tolist() for name, w in weights.items() if name.startswith("MODE")},
        "results": {
            name: classification_metrics(torch.einsum("k,knc->nc", w, expert_logits), labels)
            for name, w in weights.items()
        },
    }


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Share of queries (rows of `scores`) with a relevant item (True in `relevant`) among their k best."""
    ranked = scores.argsort(dim=1, descending=True)
    hits = relevant.gather(1, ranked)
    return {f"R@{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def retrieval(model, tokenizer, image_processor, images: Iterable, captions: list[list[str]]) -> dict:
    """Image-to-text and text-to-image recall@1/5/10; `captions[i]` are image i's captions.

    As in the paper, image-to-text routes once with the whole caption set as the task, and text-to-image routes each
    query caption on its own.
    """
    texts = [caption for image_captions in captions for caption in image_captions]
    owner = torch.tensor([i for i, image_captions in enumerate(captions) for _ in image_captions])
    text_features, router_embeds = encode_texts(model, tokenizer, texts)
    image_features = encode_images(model, image_processor, images, len(captions))
    # [K, images, texts]: each expert's scaled cosine similarities
    expert_logits = logit_scales(model)[:, None, None] * torch.einsum("knd,ktd->knt", image_features, text_features)
    relevant = owner[None, :] == torch.arange(len(captions))[:, None]  # [images, texts]

    results = {}
    for name, task_weights in ensembles(model, router_embeds).items():
        if name == "MODE uniform" or not name.startswith("MODE"):
            per_query = task_weights.expand(len(texts), -1)
        else:  # each caption is a task of its own
            routing = name.split()[-1]
            per_query = torch.stack([model.route_embeddings(e[None], routing=routing).cpu() for e in router_embeds])
        image_to_text = torch.einsum("k,knt->nt", task_weights, expert_logits)
        text_to_image = torch.einsum("tk,knt->tn", per_query, expert_logits)
        results[name] = {
            **{f"image_to_text_{m}": v for m, v in recall_at_k(image_to_text, relevant).items()},
            **{f"text_to_image_{m}": v for m, v in recall_at_k(text_to_image, relevant.t()).items()},
        }
    return {"task": "image-text-retrieval", "num_images": len(captions), "num_texts": len(texts), "results": results}


def command_line(description: str) -> argparse.ArgumentParser:
    """The flags every evaluation script takes; each adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="CLIPModel or ModeCLIPModel: local directory or Hub id")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code that --model ships (its config's auto_map); never needed for a CLIP or a MODE, "
        "whose code this package provides",
    )
    parser.add_argument("--dataset", required=True, help="save_to_disk, imagefolder or data-file directory, or Hub id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-column", help="default: the dataset's image column")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="evaluate on the first N examples only")
    parser.add_argument("--device", help="e.g. cuda; default: cpu")
    parser.add_argument("--output", required=True, help="results JSON; the markdown table goes beside it (.md)")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Refuse, before any work, sizes below one, a device there is not, and an --output that could not be written."""
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}.")
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise InputError(f"--device {args.device!r} is not a device ({error}).") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {args.device!r}: torch sees no CUDA device here.")
    output = check_output_file(args.output)
    if output.suffix == ".md":
        raise InputError(f"--output {args.output!r}: the markdown table goes beside the JSON as .md; name a .json.")
    check_output_file(output.with_suffix(".md"), "--output's table")


def load_split(args: argparse.Namespace):
    """The dataset split the flags name (its first `--limit` rows) and its image column."""
    import datasets

    from .data import load_pairs

    dataset = load_pairs(args.dataset, args.split)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    image_column = args.image_column or column_of_type(dataset, datasets.Image, "--image-column")
    check_column(dataset, image_column, "--image-column", datasets.Image)
    return dataset, image_column


def check_column(dataset, name: str, flag: str, feature_type: type | None = None) -> None:
    """The dataset must have the column `flag` names, holding `feature_type` features when given."""
    if name not in dataset.features:
        raise InputError(f"{flag} {name!r} is not a column of the dataset; it has {list(dataset.features)}.")
    if feature_type is not None and not isinstance(dataset.features[name], feature_type):
        raise InputError(f"{flag} {name!r} holds {dataset.features[name]}, not {feature_type.__name__} features.")


def class_labels(dataset, label_column: str, classnames: list[str] | None) -> tuple[list[int], list[str]]:
    """The labels in `label_column` and the class names they index: `classnames`, or else the ClassLabel's."""
    import datasets

    check_column(dataset, label_column, "--label-column")
    feature = dataset.features[label_column]
    if classnames is None:
        if not isinstance(feature, datasets.ClassLabel):
            raise InputError(f"column {label_column!r} holds no class names: pass them with --classnames FILE.json.")
        classnames = feature.names
    labels = dataset[label_column]
    check_labels(labels, classnames)
    return labels, classnames


def captions_per_image(dataset, caption_column: str) -> list[list[str]]:
    """Each row's captions (its column holds a string or a list of strings); a row without one is refused."""
    check_column(dataset, caption_column, "--caption-column")
    captions = []
    for row, value in enumerate(dataset[caption_column]):
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError(
                f"row {row} of --caption-column {caption_column!r} holds {reprlib.repr(value)}: every image needs "
                "a caption or a list of captions, none empty."
            )
        captions.append(texts)
    return captions


def load_model(path: str, device: str | None = None, trust_remote_code: bool = False):
    """A CLIPModel or ModeCLIPModel (local directory or Hub id) with its tokenizer and image processor.

    Without `trust_remote_code` no code from `path` runs: this package's classes serve a MODE.
    """
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    check_model(path, trust_remote_code)
    # trust_remote_code is False, never None, here: None makes transformers ask on stdin whether to run the code.
    with naming_failures("--model", path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
    experts_of(model)  # a remote-code model of another kind is refused here
    if device:
        model.to(device)
    return model, tokenizer, image_processor


def check_model(path: str, trust_remote_code: bool) -> None:
    """Refuse, from its config and weight files alone, a --model that the evaluators cannot score or may not run."""
    from transformers import PretrainedConfig

    with naming_failures("--model", path):
        config, _ = PretrainedConfig.get_config_dict(path)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        if "auto_map" not in config:
            raise InputError(
                f"--model {path!r} is not a CLIP or MODE model: its config's model_type is {model_type!r}, "
                f"not one of {MODEL_TYPES}."
            )
        if not trust_remote_code:
            raise InputError(
                f"--model {path!r} (model_type {model_type!r}) loads with Python code of its own (its config's "
                "auto_map): pass --trust-remote-code if you trust that code."
            )
    if os.path.isdir(path):
        check_weight_files(path, "--model")


def column_of_type(dataset, feature_type: type, flag: str) -> str:
    """The dataset's only column whose feature is `feature_type` (e.g. the image column)."""
    import datasets

    columns = [name for name, feature in dataset.features.items() if isinstance(feature, feature_type)]
    if len(columns) != 1:
        kind = {datasets.Image: "image", datasets.ClassLabel: "class-label"}.get(feature_type, feature_type.__name__)
        raise InputError(
            f"the dataset has {len(columns)} {kind} columns ({columns}): name the one to use with {flag}."
        )
    return columns[0]


def image_batches(dataset, image_column: str, batch_size: int) -> Iterable[list]:
    """The images as batches of RGB PIL images; one that cannot be decoded is an InputError naming its row."""
    import datasets

    # Decoded here, one row at a time, so that a failure knows its row.
    undecoded = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    for start in range(0, len(undecoded), batch_size):
        rows = undecoded[start : start + batch_size][image_column]
        yield [decoded_image(value, start + i, image_column) for i, value in enumerate(rows)]


def decoded_image(value: dict | None, row: int, column: str):
    """An undecoded `datasets.Image` value (bytes or path) as an RGB PIL image."""
    import datasets

    try:
        return datasets.Image().decode_example(value).convert("RGB")
    except Exception as error:  # PIL fails in many types (UnidentifiedImageError, OSError for truncated data, ...)
        where = f" ({value['path']})" if value and value.get("path") else ""
        raise InputError(
            f"row {row} of --image-column {column!r}{where} is not an image that can be decoded "
            f"({type(error).__name__})."
        ) from error


def markdown_table(results: dict) -> str:
    """The results of one evaluation as a markdown table, one row per ensemble or expert."""
    metrics = list(next(iter(results["results"].values())))
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in results["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * values[m]:.2f}" for m in metrics) + " |")
    return "\n".join(lines)


def write_results(results: dict, output: str) -> str:
    """Write the results as a markdown table (.md) and as JSON at `output`; return the table.

    The JSON, which the main job and the model card read, is written last: its presence means both are complete.
    """
    table = markdown_table(results)
    write_text(Path(output).with_suffix(".md"), table + "\n")
    write_json(output, results)
    return table


def card_rows(results: dict, dataset: str, split: str) -> list[dict]:
    """The results as `eval_results.json` rows, which the model card turns into its table and model-index."""
    return [
        {"task": results["task"], "dataset": dataset, "split": split, "metric": metric, "model": name, "value": value}
        for name, values in results["results"].items()
        for metric, value in values.items()
    ]
