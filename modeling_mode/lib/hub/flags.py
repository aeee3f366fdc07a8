"""The Hub flags the scripts that can push share, named as in transformers' `TrainingArguments`."""

from dataclasses import dataclass, field

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..core.errors import InputError


def check_repo_id(repo_id: str, flag: str = "repo_id") -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(f"{flag} {repo_id!r} is not a Hub repo id (org/name): {error}") from error


@dataclass(kw_only=True)  # keyword-only: the script's own fields, without defaults, may follow these
class HubArguments:
    """`--push_to_hub --hub_model_id ORG/NAME [--hub_private_repo]`: push the output once it is complete on disk."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push the output to the Hub once it is saved."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The Hub repo to push to, org/name."})
    hub_private_repo: bool = field(
        default=False, metadata={"help": "Create the Hub repo private.", "aliases": ["--private"]}
    )

    def __post_init__(self):
        # Checked before any work: a bad repo id found after hours of clustering would waste them.
        if self.push_to_hub and self.hub_model_id is None:
            raise InputError("--push_to_hub needs --hub_model_id ORG/NAME, the repo to push to.")
        if self.hub_model_id is not None:
            check_repo_id(self.hub_model_id, "--hub_model_id")
