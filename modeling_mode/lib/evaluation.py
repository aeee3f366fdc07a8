"""Zero-shot classification and image-text retrieval for a `CLIPModel` or a `ModeCLIPModel`.

Every expert encodes the images and texts once; the ensembles (routed with the paper's formula, with the released
one, uniform) and each expert alone are then combinations of the experts' cosine similarities, as in MODE:
`logits = sum_k w_k * exp(logit_scale_k) * cos_k`. A `CLIPModel` is a MODE of one expert with weight one.

The metrics are `evaluate` modules kept in this package (`metrics/`), loaded by path: no Hub, so offline too.
`eval/zeroshot.py` and `eval/retrieval.py` are thin entry points to `evaluate_zero_shot` and `evaluate_retrieval`.
"""

import functools
import importlib.util
import numbers
import os
import reprlib
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPModel

from ..configuration_mode_clip import ROUTINGS, ModeCLIPConfig
from ..modeling_mode_clip import ModeCLIPModel
from . import cli
from .errors import InputError, check_output_file, check_weight_files, naming_failures
from .files import read_json, write_json, write_text
from .mode_folder import WEIGHT_PATTERNS, check_mode_folder, local_mode

# The `model_type`s the evaluators score: a CLIPModel and a ModeCLIPModel, whose code transformers and this package
# provide. A model of another type runs the Python code its repo ships, which needs --trust-remote-code.
MODEL_TYPES = ("clip", "mode_clip")
TEMPLATES = "zeroshot_classification_templates"  # clip-benchmark's name for the prompt templates
METRICS = Path(__file__).resolve().parent / "metrics"
# The names the results go by: each routing of a MODE, each of its experts alone, or a CLIPModel itself.
MODE_NAME, EXPERT_NAME, CLIP_NAME = "MODE {routing}", "expert {k}", "CLIPModel"

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
        return read_json(path)
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
    named = read_json(Path(package.origin).parent / "datasets" / f"en_{what}.json")
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
    # [K, N, C]: each expert's scaled cosine similarities
    expert_logits = logit_scales(model)[:, None, None] * torch.einsum("knd,kcd->knc", image_features, class_features)
    weights = ensembles(model, router_embeds)
    return weights, {
        name: classification_metrics(torch.einsum("k,knc->nc", w, expert_logits), labels)
        for name, w in weights.items()
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


# ---------------------------------------------------------------------------------------------- the evaluators' flags


@dataclass
class EvaluationArguments:
    """The flags both evaluators take; each script's dataclass adds its own."""

    model: str = field(metadata={"help": "CLIPModel or ModeCLIPModel: local directory or Hub id"})
    dataset: str = field(metadata={"help": "save_to_disk, imagefolder or data-file directory, or Hub id"})
    output: str = field(
        metadata={"help": "results JSON; the markdown table (.md) and evaluate's record (.evaluate.json) go beside it"}
    )
    split: str = field(default="test", metadata={"help": "the dataset split to evaluate on"})
    image_column: str | None = field(default=None, metadata={"help": "none given: the dataset's only Image column"})
    batch_size: int = field(default=64, metadata={"help": "images per batch"})
    limit: int | None = field(default=None, metadata={"help": "evaluate on the first N examples only"})
    device: str | None = field(
        default=None, metadata={"help": "e.g. cuda:1; none given: cuda when torch sees a GPU, else cpu"}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "run the Python code that --model ships (its config's auto_map); never needed for a CLIP or a "
            "MODE, whose code this package provides"
        },
    )
    eval_results: bool = field(
        default=True,
        metadata={
            "help": "add the results to a local --model's eval_results.json, which its model card shows, in place of "
            "an earlier evaluation of the same task, dataset and split (--no-eval-results: leave the model as it is)"
        },
    )

    def __post_init__(self):
        """Refuse, before any work, sizes below one, a device there is not, and outputs that could not be written."""
        for flag, value in (("--batch-size", self.batch_size), ("--limit", self.limit)):
            if value is not None and value < 1:
                raise InputError(f"{flag} must be at least 1, got {value}.")
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_device(self.device)
        output = check_output_file(self.output)
        if output.suffix == ".md":
            raise InputError(
                f"--output {self.output!r}: the markdown table goes beside the JSON as .md; name a .json."
            )
        check_output_file(output.with_suffix(".md"), "--output's table")
        check_output_file(evaluate_record(output), "--output's evaluate record")
        if self.model_results is not None:
            if output.resolve() == self.model_results.resolve():
                raise InputError(f"--output {self.output!r} is the model's eval_results.json: name another file.")
            check_output_file(self.model_results, "--model's eval_results.json")

    @property
    def model_results(self) -> Path | None:
        """The eval_results.json the results go into: a local --model's, unless --no-eval-results."""
        return Path(self.model) / "eval_results.json" if self.eval_results and os.path.isdir(self.model) else None


@dataclass
class ZeroShotArguments(EvaluationArguments):
    label_column: str | None = field(
        default=None, metadata={"help": "none given: the dataset's only ClassLabel column"}
    )
    classnames: str | None = field(
        default=None,
        metadata={"help": "JSON list of class names by label id, or a SET; none given: the ClassLabel's names"},
    )
    templates: str | None = field(
        default=None, metadata={"help": "JSON list of prompt templates with {c} for the class name, or a SET"}
    )


@dataclass
class RetrievalArguments(EvaluationArguments):
    caption_column: str = field(default="caption", metadata={"help": "a caption or a list of captions per image"})


def zero_shot_inputs(arguments: ZeroShotArguments):
    """Every input of a zero-shot evaluation but the model, checked: (dataset, image column, labels, class names,
    templates). The main job checks its held-out sets with it before its first stage."""
    import datasets

    templates = prompt_templates(strings_from(arguments.templates, TEMPLATES) if arguments.templates else None)
    classnames = strings_from(arguments.classnames, "classnames") if arguments.classnames else None
    dataset, image_column = load_split(arguments)
    label_column = arguments.label_column or column_of_type(dataset, datasets.ClassLabel, "--label-column")
    labels, classnames = class_labels(dataset, label_column, classnames)
    return dataset, image_column, labels, classnames, templates


def retrieval_inputs(arguments: RetrievalArguments):
    """Every input of a retrieval evaluation but the model, checked: (dataset, image column, captions per image)."""
    dataset, image_column = load_split(arguments)
    return dataset, image_column, captions_per_image(dataset, arguments.caption_column)


def evaluate_zero_shot(arguments: ZeroShotArguments) -> str:
    """eval/zeroshot.py: check every input before the model loads, score the model, write the results; the table."""
    dataset, image_column, labels, classnames, templates = zero_shot_inputs(arguments)
    model, tokenizer, image_processor = load_model(arguments.model, arguments.device, arguments.trust_remote_code)

    images = image_batches(dataset, image_column, arguments.batch_size)
    results = zero_shot_classification(model, tokenizer, image_processor, images, labels, classnames, templates)
    return write_results(results, arguments)


def evaluate_retrieval(arguments: RetrievalArguments) -> str:
    """eval/retrieval.py: check every input before the model loads, score the model, write the results; the table."""
    dataset, image_column, captions = retrieval_inputs(arguments)
    model, tokenizer, image_processor = load_model(arguments.model, arguments.device, arguments.trust_remote_code)

    images = image_batches(dataset, image_column, arguments.batch_size)
    results = retrieval(model, tokenizer, image_processor, images, captions)
    return write_results(results, arguments)


# ------------------------------------------------------------------------------------------------------ command lines

# The --help of eval/zeroshot.py (`mode-zeroshot`) and eval/retrieval.py (`mode-retrieval`).
ZERO_SHOT_DESCRIPTION = """\
Zero-shot image classification of a CLIPModel or a ModeCLIPModel on a `datasets` image-classification set.

    python eval/zeroshot.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test \\
        [--templates FILE.json|SET] [--classnames FILE.json|SET] --output results.json

`mode-zeroshot` takes the same flags.

SET names a benchmark's class names or prompt templates as clip-benchmark publishes them (e.g. `imagenet1k`: OpenAI's
80 ImageNet templates; `cifar10`, `food101`, ...), read from the `clip-benchmark` package's data files.

For a MODE, reports side by side the ensemble routed with the paper's formula, with the released code's, uniform, and
each expert alone, with the routing weights used. Writes the results as JSON, a markdown table beside it (.md) and
`evaluate`'s record of the metrics (.evaluate.json); a local --model's eval_results.json, which its model card shows,
gets the results too (--no-eval-results: not).
"""
RETRIEVAL_DESCRIPTION = """\
Image-to-text and text-to-image retrieval (recall@1/5/10) of a CLIPModel or a ModeCLIPModel.

    python eval/retrieval.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test --output results.json

`mode-retrieval` takes the same flags.

The dataset holds one image per row and its captions (a string or a list of strings). A row without a caption (an
empty string or list, or none) is refused, naming the row: an image no text describes has no right answer, so filter
such rows out first. A MODE is routed as in the paper: the whole caption set is the task for image-to-text, each
query caption its own task for text-to-image. Writes what eval/zeroshot.py writes: the results JSON, its table (.md),
`evaluate`'s record (.evaluate.json) and, for a local --model, its eval_results.json rows.
"""


def zero_shot_main(argv: list[str] | None = None) -> None:
    """eval/zeroshot.py: the evaluation, then its table."""
    print(evaluate_zero_shot(cli.parse(ZeroShotArguments, ZERO_SHOT_DESCRIPTION, argv)))


def retrieval_main(argv: list[str] | None = None) -> None:
    """eval/retrieval.py: the evaluation, then its table."""
    print(evaluate_retrieval(cli.parse(RetrievalArguments, RETRIEVAL_DESCRIPTION, argv)))


def zero_shot_command() -> None:
    """`mode-zeroshot`, eval/zeroshot.py: `zero_shot_main`, bad input ending with exit status 2 (`cli.run`)."""
    cli.run(zero_shot_main)


def retrieval_command() -> None:
    """`mode-retrieval`, eval/retrieval.py: `retrieval_main`, bad input ending with exit status 2 (`cli.run`)."""
    cli.run(retrieval_main)


# ------------------------------------------------------------------------------------------------------------ inputs


def check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise InputError(f"--device {device!r} is not a device ({error}).") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device!r}: torch sees no CUDA device here.")


def load_split(arguments: EvaluationArguments):
    """The dataset split the flags name (its first `--limit` rows) and its image column."""
    import datasets

    from .data import load_pairs

    dataset = load_pairs(arguments.dataset, arguments.split)
    if arguments.limit:
        dataset = dataset.select(range(min(arguments.limit, len(dataset))))
    image_column = arguments.image_column or column_of_type(dataset, datasets.Image, "--image-column")
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
    if model_type == ModeCLIPConfig.model_type:  # before anything is built: a config can ask for much
        check_mode_folder(local_mode(path, allow_patterns=WEIGHT_PATTERNS))
    elif os.path.isdir(path):
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


def evaluate_record(output: Path) -> Path:
    """Where the metric record of the results JSON `output` goes (`write_evaluate_record`)."""
    return output.with_suffix(".evaluate.json")


def write_results(results: dict, arguments: EvaluationArguments) -> str:
    """Write the results of `arguments`' evaluation; return their markdown table.

    Beside the table (.md) go `evaluate`'s record of the metric values (.evaluate.json, with the time, the git commit
    and the versions) and, for a local model, its eval_results.json rows. The results JSON, which the main job and
    report read, is written last: its presence means everything else is complete.
    """
    results = {**results, "model": arguments.model, "dataset": arguments.dataset, "split": arguments.split}
    output = Path(arguments.output)
    table = markdown_table(results)
    write_text(output.with_suffix(".md"), table + "\n")
    write_json(evaluate_record(output), metric_record(results))
    if arguments.model_results is not None:
        config = Path(arguments.model) / "config.json"
        revision = model_revision(read_json(config) if config.is_file() else {})
        add_to_eval_results(arguments.model_results, [row | {"revision": revision} for row in card_rows(results)])
    write_json(output, results)
    return table


def metric_record(results: dict) -> dict:
    """The metric values with their provenance, in `evaluate.save`'s format (time, versions, commit), except that the
    commit is this package's, found without git's complaints: `evaluate.save` runs git in the current directory,
    which outside a checkout prints an error into every log, and without git fails after the metrics are computed."""
    import evaluate

    record = {key: results[key] for key in ("task", "model", "dataset", "split", "results")}
    return record | {
        "_timestamp": datetime.now().isoformat(),
        "_git_commit_hash": package_commit(),
        "_evaluate_version": evaluate.__version__,
        "_python_version": sys.version,
        "_interpreter_path": sys.executable,
    }


def package_commit() -> str | None:
    """The git commit of this package's checkout, or None (an installed wheel, or no git on the machine)."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def card_rows(results: dict) -> list[dict]:
    """The results as `eval_results.json` rows, which the model card turns into its table and model-index.

    A local data set is named by its absolute path, so that it is one data set however it was given; the card names
    it by its last path component.
    """
    dataset = os.path.abspath(results["dataset"]) if os.path.exists(results["dataset"]) else results["dataset"]
    evaluation = {"task": results["task"], "dataset": dataset, "split": results["split"]}
    return [
        evaluation | {"metric": metric, "model": name, "value": value}
        for name, values in results["results"].items()
        for metric, value in values.items()
    ]


def add_to_eval_results(path: Path, rows: list[dict]) -> None:
    """Add one evaluation's `rows` to the eval_results.json at `path`, in place of those of an earlier evaluation of
    the same task on the same data set and split: evaluating again updates the model card, never duplicates it."""
    from filelock import FileLock

    def evaluation(row):
        return row["task"], row["dataset"], row["split"]

    replaced = {evaluation(row) for row in rows}
    with FileLock(path.with_name(f".{path.name}.lock")):  # another evaluator of this model may be adding its rows
        earlier = read_json(path) if path.is_file() else []
        write_json(path, [row for row in earlier if evaluation(row) not in replaced] + rows)


def model_revision(config: dict) -> int:
    """Which version of a MODE this is: 0 as assembled, then one more per change of its experts (its changelog's
    length: `growth`). Evaluation rows record it, so that a changed MODE's card tells its results from its parent's."""
    return len(config.get("changelog") or [])


def results_name(config: dict) -> str:
    """The name of a model's own results among those the evaluators report: a MODE as its config routes it, or a
    CLIPModel itself (the other rows are baselines: the other routings and each expert alone)."""
    return MODE_NAME.format(routing=config["routing"]) if config.get("model_type") == "mode_clip" else CLIP_NAME
