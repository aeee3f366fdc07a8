"""An evaluation's inputs, checked before the model loads and loaded: its flags (`EvaluationArguments` and each
evaluator's), the named sets of class names and templates (clip-benchmark's data files), the dataset's columns, and
the model, which no code from its repo runs for unless --trust-remote-code."""

import importlib.util
import os
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...configuration_mode_clip import MODE_CONFIGS
from ...families import FAMILIES
from ..core.checks import check_output_file, check_weight_files, naming_failures
from ..core.errors import InputError
from ..core.files import read_json
from ..core.mode_folder import WEIGHT_PATTERNS, check_mode_folder, local_mode
from ..core.processors import load_tokenizer
from .outputs import evaluate_record
from .scoring import check_labels, experts_of, prompt_templates

# The `model_type`s the evaluators score: a dual encoder of a MODE family and a MODE, whose code transformers and this
# package provide. A model of another type runs the Python code its repo ships, which needs --trust-remote-code.
MODEL_TYPES = (*FAMILIES, *MODE_CONFIGS)
TEMPLATES = "zeroshot_classification_templates"  # clip-benchmark's name for the prompt templates


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


@dataclass
class EvaluationArguments:
    """The flags both evaluators take; each script's dataclass adds its own."""

    model: str = field(
        metadata={"help": "A MODE, or a CLIP, MetaCLIP 2, SigLIP or SigLIP 2 model: local directory or Hub id"}
    )
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

    from ..data.pairs import load_pairs

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
    """A MODE or a dual encoder of a MODE family (local directory or Hub id) with its tokenizer and image processor.

    Without `trust_remote_code` no code from `path` runs: this package's classes serve a MODE.
    """
    from transformers import AutoImageProcessor, AutoModel

    check_model(path, trust_remote_code)
    # trust_remote_code is False, never None, here: None makes transformers ask on stdin whether to run the code.
    with naming_failures("--model", path):
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
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
                f"--model {path!r} is not a dual encoder of a MODE family or a MODE: its config's model_type is "
                f"{model_type!r}, not one of {MODEL_TYPES}."
            )
        if not trust_remote_code:
            raise InputError(
                f"--model {path!r} (model_type {model_type!r}) loads with Python code of its own (its config's "
                "auto_map): pass --trust-remote-code if you trust that code."
            )
    if model_type in MODE_CONFIGS:  # before anything is built: a config can ask for much
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
