"""Push a MODE run to the Hugging Face Hub: the model and its card; on request each expert and the clustered data.

    python hub_cards/push.py runs/mode-clip org/mode-clip [--private] [--revision BRANCH] [--push-experts]
        [--push-dataset --clusters runs/clusters] [--license LICENSE] [--base-model HUB_ID] [--commit-message MSG]

Each repo gets one commit, and the Hub applies a commit whole or not at all: a push that fails leaves no partial
state in that repo, says which files did not go, and never touches the local run. Experts go to `REPO-expert-K`
(standalone `CLIPModel` repos), the clustered data to the dataset repo `REPO-clusters`.
"""

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_cards.cards import TEMPLATES, dataset_card, model_card  # noqa: E402

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


class PushError(RuntimeError):
    """A push that did not land: the message says which repo and which files."""


def commit_folder(api, folder, repo_id, *, card=None, repo_type="model", private=False, revision=None, message=None):
    """Create `repo_id` if needed and commit every file under `folder` (plus `card` as README.md) in one commit."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder)))
    operations = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files]
    if card is not None and not (folder / "README.md").is_file():  # a README the user wrote wins
        operations.append(CommitOperationAdd("README.md", str(card).encode()))
    paths = [op.path_in_repo for op in operations]
    if not paths:
        raise PushError(f"nothing to push: {folder} has no files.")
    if (api.token or get_token()) is None:
        raise PushError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN.")
    try:
        if api.repo_exists(repo_id, repo_type=repo_type):
            logger.info("%s repo %s exists: adding a commit to it", repo_type, repo_id)
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"Upload MODE {repo_type} from {folder.name}",
            repo_type=repo_type,
            revision=revision,
        )
    except HfHubHTTPError as error:
        raise PushError(
            f"pushing to {repo_type} repo {repo_id} failed: {error}\n"
            f"A Hub commit lands whole or not at all, so none of these {len(paths)} files went: {', '.join(paths)}. "
            "The local files are untouched; run the push again."
        ) from error
    logger.info("pushed %d files to %s (%s)", len(paths), url, commit.commit_url)
    return commit


def push_experts(api, model_dir, repo_id, *, license="other", **commit_options):
    """Push each expert of the MODE in `model_dir` as a standalone CLIPModel repo `{repo_id}-expert-{k}`.

    Yields each commit as it lands, so that a caller knows which did when a later one fails.
    """
    from modeling_mode import ModeCLIPModel

    model = ModeCLIPModel.from_pretrained(model_dir)
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


def push_clustered_dataset(api, clusters_dir, repo_id, *, license="other", **commit_options):
    """Push a clustering run's labelled pairs (as parquet) and centroids to the dataset repo `repo_id`."""
    import datasets

    clusters_dir = Path(clusters_dir)
    card = dataset_card(clusters_dir, repo_id, license)
    pairs = datasets.load_from_disk(str(clusters_dir / "dataset"))
    with tempfile.TemporaryDirectory() as folder:
        num_shards = max(1, pairs.data.nbytes // 500_000_000 + 1)
        for i in range(num_shards):
            shard = pairs.shard(num_shards, i, contiguous=True)
            shard.to_parquet(f"{folder}/data/train-{i:05d}-of-{num_shards:05d}.parquet")
        for name in ("clusters.safetensors", "clusters.json"):
            (Path(folder) / name).write_bytes((clusters_dir / name).read_bytes())
        return commit_folder(api, folder, repo_id, card=card, repo_type="dataset", **commit_options)


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
    """Push the MODE in `model_dir` (and its experts, and the clustered data of `clusters_dir`) to the Hub."""
    api = api or HfApi()
    options = dict(private=private, revision=revision, message=commit_message)
    commits = []
    try:
        commits.append(
            commit_folder(api, model_dir, repo_id, card=model_card(model_dir, repo_id, license, base_model), **options)
        )
        if experts:
            for commit in push_experts(api, model_dir, repo_id, license=license, **options):
                commits.append(commit)
        if clusters_dir is not None:
            dataset_repo = f"{repo_id}-clusters"
            commits.append(push_clustered_dataset(api, clusters_dir, dataset_repo, license=license, **options))
    except PushError as error:
        landed = ", ".join(commit.commit_url for commit in commits) or "none"
        raise PushError(f"{error}\nCommits that did land before it: {landed}.") from error
    return commits


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a saved ModeCLIPModel directory (train/assemble.py's output)")
    parser.add_argument("repo_id", help="the model repo, e.g. org/mode-clip")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing)")
    parser.add_argument("--commit-message")
    parser.add_argument("--license", default="other", help="license id for the cards' metadata (default: other)")
    parser.add_argument("--base-model", help="Hub id of the checkpoint the seed was forked from, for the card")
    parser.add_argument("--push-experts", action="store_true", help="also push each expert as a CLIPModel repo")
    parser.add_argument("--push-dataset", action="store_true", help="also push the clustered pairs and centroids")
    parser.add_argument("--clusters", help="the clustering run's output directory (needed by --push-dataset)")
    args = parser.parse_args(argv)
    if args.push_dataset and not args.clusters:
        parser.error("--push-dataset needs --clusters DIR, the clustering run's output directory")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        commits = push_run(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            license=args.license,
            base_model=args.base_model,
            experts=args.push_experts,
            clusters_dir=args.clusters if args.push_dataset else None,
        )
    except (PushError, ValueError) as error:
        sys.exit(f"error: {error}")
    for commit in commits:
        print(commit.commit_url)


if __name__ == "__main__":
    main()
