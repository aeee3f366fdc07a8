"""Pushing a MODE: every input checked before the first commit (`check_mode_dir`), then one commit for the model and
its card, one per expert (`push_experts`) and one for the clustered data (`clustering.push`), each whole or not at
all. The flags and how it fails: `command_line`, whose docstring is hub_cards/push.py's --help."""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.dynamic_module_utils import get_relative_import_files

from ...modeling_mode_clip import ModeCLIPModel
from ..clustering.push import ClusteredData
from ..core.checks import check_weight_files, naming_failures
from ..core.errors import InputError
from ..core.files import read_json
from ..core.mode_folder import check_mode_folder, load_mode
from ..hub.cards import TEMPLATES
from ..hub.commits import PushError, _describe, check_token, commit_folder
from ..hub.flags import check_repo_id
from .model_card import mode_config, model_card

# Files that make up a processor; they go with every expert so that each one loads alone.
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
)


def check_mode_dir(model_dir: str | Path) -> None:
    """Refuse (InputError), before anything is pushed, a model directory that would not load from the Hub or would
    publish what is not its own: no MODE config, weights that do not open or that its config does not describe, a
    link to a file elsewhere (`check_mode_folder`), remote code missing, no tokenizer or image processor."""
    model_dir = Path(model_dir)
    config = mode_config(model_dir)
    if not check_weight_files(model_dir, "The MODE in"):
        raise InputError(f"{model_dir} holds no weights (model.safetensors): assemble the model again.")
    check_mode_folder(model_dir, "The MODE in")
    check_remote_code(model_dir, config)
    with naming_failures("The processor of the MODE in", str(model_dir)):
        AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=False)


def check_remote_code(model_dir: Path, config: dict) -> None:
    """The modules that config.json's and tokenizer_config.json's auto_maps name (all the code a Hub user gets) and
    those they import must be there (a tokenizer's entry is a [slow, fast] pair of references).

    A reference `other/repo--module.Class` is code of another repo, not of this directory.
    """
    tokenizer_config = model_dir / "tokenizer_config.json"
    auto_maps = [config, read_json(tokenizer_config) if tokenizer_config.is_file() else {}]
    references = [ref for auto_map in auto_maps for value in auto_map.get("auto_map", {}).values()
                  for ref in (value if isinstance(value, list) else [value])]  # fmt: skip
    modules = {ref.rsplit(".", 1)[0] for ref in references if ref and "--" not in ref}
    try:
        for module in sorted(modules):
            get_relative_import_files(model_dir / f"{module}.py")  # reads each file, and each it imports
    except FileNotFoundError as error:
        raise InputError(
            f"{model_dir} has no {Path(error.filename).name}, remote code its config.json needs to load from the "
            "Hub: assemble the model again (train/assemble.py)."
        ) from error


def push_experts(api, model: ModeCLIPModel, model_dir, repo_id, *, license="other", **commit_options):
    """Push each expert of `model` (the MODE saved in `model_dir`) as a standalone CLIPModel repo
    `{repo_id}-expert-{k}`, with the processor files of `model_dir`.

    Yields each commit as it lands, so that a caller knows which did when a later one fails.
    """
    for k in range(model.config.num_experts):
        expert_repo = f"{repo_id}-expert-{k}"
        with tempfile.TemporaryDirectory() as folder:
            model.expert_model(k).save_pretrained(folder)  # a LoRA expert with its adapters merged
            for name in PROCESSOR_FILES:
                if (Path(model_dir) / name).is_file():
                    (Path(folder) / name).write_bytes((Path(model_dir) / name).read_bytes())
            card = ModelCard.from_template(
                ModelCardData(
                    library_name="transformers",
                    pipeline_tag="zero-shot-image-classification",
                    license=license,
                    tags=["clip", "mode", "data-expert"],
                ),
                template_path=str(TEMPLATES / "expert_card.md"),
                repo_id=expert_repo,
                mode_repo_id=repo_id,
                expert=k,
                num_experts=model.config.num_experts,
            )
            yield commit_folder(api, folder, expert_repo, card=card, **commit_options)


def push_run(
    model_dir,
    repo_id,
    *,
    private=False,
    revision=None,
    commit_message=None,
    license="other",
    base_model=None,
    experts=False,
    clusters_dir=None,
    api=None,
) -> list:
    """Push the MODE in `model_dir` (and its experts, and the clustered data of `clusters_dir`) to the Hub.

    Every input is checked before the first commit (InputError); a failure after it is a PushError that lists the
    commits that did land.
    """
    check_repo_id(repo_id)
    api = api or HfApi()
    check_token(api)
    check_mode_dir(model_dir)
    card = model_card(model_dir, repo_id, license, base_model)
    mode = load_mode(model_dir, "The MODE in") if experts else None
    clustered = ClusteredData.check(clusters_dir, f"{repo_id}-clusters", license) if clusters_dir else None
    options = dict(private=private, revision=revision, message=commit_message)
    commits = []
    try:
        commits.append(commit_folder(api, model_dir, repo_id, card=card, **options))
        if mode is not None:
            for commit in push_experts(api, mode, model_dir, repo_id, license=license, **options):
                commits.append(commit)
        if clustered is not None:
            commits.append(clustered.push(api, **options))
    except (PushError, OSError) as error:  # OSError: writing an expert or the parquet files here, between commits
        failure = error if isinstance(error, PushError) else f"staging the next push failed ({_describe(error)})."
        landed = ", ".join(commit.commit_url for commit in commits) or "none"
        raise PushError(f"{failure} Commits that did land before it: {landed}.") from error
    return commits


@dataclass
class PushArguments:
    """Flags of `hub_cards/push.py` (`mode-push`)."""

    model_dir: str = field(metadata={"help": "A saved ModeCLIPModel directory (train/assemble.py's output)."})
    hub_model_id: str = field(metadata={"help": "The model repo, e.g. org/mode-clip.", "aliases": ["--repo_id"]})
    private: bool = field(
        default=False, metadata={"help": "Create the repos private.", "aliases": ["--hub_private_repo"]}
    )
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (made from main if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "Message of each commit."})
    license: str = field(default="other", metadata={"help": "License id for the cards' metadata."})
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the checkpoint the seed was forked from, for the card."}
    )
    push_experts: bool = field(default=False, metadata={"help": "Also push each expert as a CLIPModel repo."})
    push_dataset: bool = field(
        default=False,
        metadata={"help": "Also push the clustering: its labelled pairs (--streaming: its labels table), centroids."},
    )
    clusters: str | None = field(
        default=None, metadata={"help": "The clustering run's output directory (needed by --push-dataset)."}
    )

    def __post_init__(self):
        if self.push_dataset and not self.clusters:
            raise InputError("--push-dataset needs --clusters DIR, the clustering run's output directory.")
