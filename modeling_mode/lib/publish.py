"""Push a MODE run to the Hugging Face Hub: the model and its card; on request each expert and the clustered data.

    python hub_cards/push.py --model_dir runs/mode-clip --hub_model_id org/mode-clip [--private] [--revision BRANCH]
        [--push-experts] [--push-dataset --clusters runs/clusters] [--license LICENSE] [--base-model HUB_ID]
        [--commit-message MSG]

(or `mode-push ...`, `python -m modeling_mode.lib.publish ...`: the same flags). Everything is checked before the first
commit: the model directory must be a complete MODE (its weights, the remote code its config names, tokenizer and image
processor) and the clustering a finished run whose labelled copy dataset/ loads or, for a --streaming run (which writes
none), whose labels table is complete, so bad input pushes nothing. Each repo then gets one commit, and the Hub applies
a commit whole or not at all: a push that fails leaves no partial state in that repo, says which files did not go and
which commits did land, and never touches the local run. Experts go to `REPO-expert-K` (standalone `CLIPModel` repos),
the clustered data to the dataset repo `REPO-clusters`: the labelled pairs as parquet, or a streaming run's labels
table `labels/`. What is pushed names no local path: JSON records and safetensors metadata go up with absolute paths
cut to their last component, and a labels table names a local corpus' data files by their path relative to the corpus
root.
"""

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.dynamic_module_utils import get_relative_import_files

from ..modeling_mode_clip import ModeCLIPModel
from . import cli
from .cards import TEMPLATES, dataset_card, mode_config, model_card, published_record, without_local_paths
from .clustered_corpus import InMemoryCorpus
from .clustering import read_finished_run
from .errors import InputError, check_weight_files, files_inside, naming_failures
from .files import read_json, write_json
from .hub import check_repo_id
from .labels_table import LABELS_DIR, LABELS_JSON, LabelsTable, part_path
from .mode_folder import check_mode_folder, load_mode

try:  # the HTTP client under huggingface_hub: httpx2 in recent releases, httpx in earlier ones
    from httpx2 import HTTPError
except ImportError:
    from httpx import HTTPError

logger = logging.getLogger("mode_clip.push")
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
# JSON files whose strings are tokens, not records: "/s" there is a token to keep, not a path to shorten.
VOCABULARIES = {"tokenizer.json", "vocab.json"}
# How a push can fail once the input is checked: the Hub's answer, the connection, or the local disk.
PUSH_FAILURES = (HfHubHTTPError, HTTPError, OSError)


class PushError(RuntimeError):
    """A push that did not land: the message says which repo and which files."""


def check_token(api: HfApi) -> None:
    if (api.token or get_token()) is None:
        raise PushError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN.")


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


def public_content(path: Path) -> str | bytes:
    """What is pushed for the file `path`: the file itself, or its bytes rewritten without local paths when its JSON
    or its safetensors metadata names any."""
    if path.suffix == ".json" and path.name not in VOCABULARIES:
        if (public := published_record(path)) != read_json(path):  # the published record has no local path
            return (json.dumps(public, indent=2) + "\n").encode()
    elif path.suffix == ".safetensors":
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        if (public := {key: public_metadata(value) for key, value in metadata.items()}) != metadata:
            return safetensors_bytes(load_file(path), metadata=public)
    return str(path)


def public_metadata(value: str) -> str:
    """A safetensors metadata value without local paths; a JSON-encoded one (e.g. clusters' `settings`) stays JSON
    encoded the way train/cluster.py wrote it, so the pushed run still reads as finished."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return without_local_paths(value)
    return json.dumps(without_local_paths(decoded), sort_keys=True) if isinstance(decoded, dict | list) else value


def commit_folder(api, folder, repo_id, *, card=None, repo_type="model", private=False, revision=None, message=None):
    """Create `repo_id` if needed and commit every file under `folder` (plus `card` as README.md) in one commit."""
    folder = Path(folder)
    files = [path for path in files_inside(folder, "The folder to push") if not _hidden(path)]
    operations = [CommitOperationAdd(path.as_posix(), public_content(folder / path)) for path in files]
    if card is not None and not (folder / "README.md").is_file():  # a README the user wrote wins
        operations.append(CommitOperationAdd("README.md", str(card).encode()))
    paths = [op.path_in_repo for op in operations]
    files, url = f"{len(paths)} files ({', '.join(paths)})", None
    try:
        url = open_repo(api, repo_id, repo_type, private, revision)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"Upload MODE {repo_type} from {folder.name}",
            repo_type=repo_type,
            revision=revision,
        )
    except PUSH_FAILURES as error:
        if url is not None and not isinstance(error, HfHubHTTPError):  # the commit went out, no answer came back
            outcome = f"{url} holds all of these {files} or none (a commit lands whole or not at all): see its history"
        else:  # before the commit, or the Hub refused it
            outcome = f"none of these {files} went"
        raise PushError(
            f"pushing to {repo_type} repo {repo_id} failed ({_describe(error)}): {outcome}. "
            "The local files are untouched: run the push again."
        ) from error
    logger.info("pushed %d files to %s (%s)", len(paths), url, commit.commit_url)
    return commit


def open_repo(api, repo_id, repo_type, private, revision) -> str:
    """Create `repo_id` (and the branch `revision`) unless there; returns the repo's URL."""
    if api.repo_exists(repo_id, repo_type=repo_type):
        logger.info("%s repo %s exists: adding a commit to it", repo_type, repo_id)
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    return url


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}".rstrip(".")


def push_experts(api, model: ModeCLIPModel, model_dir, repo_id, *, license="other", **commit_options):
    """Push each expert of `model` (the MODE saved in `model_dir`) as a standalone CLIPModel repo
    `{repo_id}-expert-{k}`, with the processor files of `model_dir`.

    Yields each commit as it lands, so that a caller knows which did when a later one fails.
    """
    for k, expert in enumerate(model.experts):
        expert_repo = f"{repo_id}-expert-{k}"
        with tempfile.TemporaryDirectory() as folder:
            expert.save_pretrained(folder)
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


CLUSTER_FILES = ("clusters.safetensors", "clusters.json")


@dataclass
class ClusteredData:
    """A finished clustering run's pairs with their ids, centroids and card, checked and ready to push as a dataset
    repo: the labelled copy of its pairs (`pairs`) or, for a streaming run, which writes none, its labels table
    (`table`, checked whole; no data file it names is read)."""

    folder: Path
    repo_id: str
    card: DatasetCard
    pairs: datasets.Dataset | None
    table: LabelsTable | None

    @classmethod
    def check(cls, clusters_dir, repo_id: str, license: str = "other") -> "ClusteredData":
        """InputError unless `clusters_dir` holds a finished clustering run with its labelled copy dataset/ (which
        must load) or, streamed, its complete labels table."""
        folder = Path(clusters_dir)
        _, report = read_finished_run(folder)
        if report.get("streaming"):
            table = LabelsTable.of_run(folder, report)
            card = dataset_card(folder, repo_id, license, labels=published_labels(table.meta))
            return cls(folder, repo_id, card, None, table)
        pairs = InMemoryCorpus.labelled_copy(folder, report).dataset
        return cls(folder, repo_id, dataset_card(folder, repo_id, license), pairs, None)

    def push(self, api, **commit_options):
        """The labels, the centroids and the run's report, in one commit."""
        with tempfile.TemporaryDirectory() as folder:
            if self.table is not None:
                write_published_table(self.table, Path(folder))
            else:
                write_parquet_shards(self.pairs, Path(folder))
            for name in CLUSTER_FILES:
                (Path(folder) / name).write_bytes((self.folder / name).read_bytes())
            return commit_folder(api, folder, self.repo_id, card=self.card, repo_type="dataset", **commit_options)


def write_parquet_shards(pairs: datasets.Dataset, folder: Path) -> None:
    """The pairs with their ids, as `data/` parquet shards of at most ~500 MB."""
    num_shards = max(1, pairs.data.nbytes // 500_000_000 + 1)
    for i in range(num_shards):
        shard = pairs.shard(num_shards, i, contiguous=True)
        shard.to_parquet(f"{folder}/data/train-{i:05d}-of-{num_shards:05d}.parquet")


def write_published_table(table: LabelsTable, folder: Path) -> None:
    """`labels/` as published: its parts as they are (every data file is named relative to the corpus root already),
    and labels.json with `published_labels`."""
    (folder / LABELS_DIR).mkdir()
    for part in range(table.num_parts):
        shutil.copyfile(part_path(table.folder, part), part_path(folder / LABELS_DIR, part))
    write_json(folder / LABELS_DIR / LABELS_JSON, published_labels(table.meta))


def published_labels(labels: dict) -> dict:
    """labels.json as published: a local corpus named by its folder's name, and every other local path cut to its
    last component (`without_local_paths`, as the centroids' settings are). Its data files keep their names, relative
    to the corpus root: the published table joins with a copy of the corpus wherever it lies (train/expert.py
    --labels, train/reshard.py --dataset COPY)."""
    root = labels.get("corpus_root") or ""
    if "://" in root:  # a Hub corpus: its id and the commit it was read at are public
        return without_local_paths(labels)
    local_name = Path(os.path.abspath(labels["dataset"])).name
    return without_local_paths({**labels, "dataset": local_name, "corpus_root": Path(os.path.abspath(root)).name})


def push_clustered_dataset(api, clusters_dir, repo_id, *, license="other", **commit_options):
    """Push a finished clustering run's labelled pairs (as parquet) and centroids to the dataset repo `repo_id`."""
    check_repo_id(repo_id)
    check_token(api)
    return ClusteredData.check(clusters_dir, repo_id, license).push(api, **commit_options)


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


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


@contextmanager
def exiting_on_push_failure() -> Iterator[None]:
    """A push that did not land ends the script with `error: ...` and status 1: the Hub's failure, not the input's
    (status 2), and whatever was saved before it stays saved."""
    try:
        yield
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


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


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(PushArguments, __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its every request at INFO would bury what was pushed
    with exiting_on_push_failure():
        commits = push_run(
            args.model_dir,
            args.hub_model_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            license=args.license,
            base_model=args.base_model,
            experts=args.push_experts,
            clusters_dir=args.clusters if args.push_dataset else None,
        )
    for commit in commits:
        print(commit.commit_url)


def command() -> None:
    """The command line (`mode-push`, `python -m modeling_mode.lib.publish`, hub_cards/push.py): `main`, bad input
    ending with exit status 2 (`cli.run`)."""
    cli.run(main)


if __name__ == "__main__":
    command()
