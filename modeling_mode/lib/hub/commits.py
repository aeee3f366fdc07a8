"""One commit per Hub repo, whole or not at all: every file of a folder (and its card), without local paths in its
JSON records or safetensors metadata. A push that fails says which files did not go and which commits did land
(`PushError`), and ends a script with status 1 (`exiting_on_push_failure`): the Hub's failure, not the input's."""

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from ..core.checks import files_inside
from ..core.files import read_json
from .cards import published_record, without_local_paths

try:  # the HTTP client under huggingface_hub: httpx2 in recent releases, httpx in earlier ones
    from httpx2 import HTTPError
except ImportError:
    from httpx import HTTPError

logger = logging.getLogger("mode_clip.push")
# JSON files whose strings are tokens, not records: "/s" there is a token to keep, not a path to shorten.
VOCABULARIES = {"tokenizer.json", "vocab.json"}
# How a push can fail once the input is checked: the Hub's answer, the connection, or the local disk.
PUSH_FAILURES = (HfHubHTTPError, HTTPError, OSError)


class PushError(RuntimeError):
    """A push that did not land: the message says which repo and which files."""


def check_token(api: HfApi) -> None:
    if (api.token or get_token()) is None:
        raise PushError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN.")


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
