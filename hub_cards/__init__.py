"""Model and dataset cards for MODE runs, and the code that pushes a run to the Hugging Face Hub."""

from .cards import dataset_card, model_card
from .push import PushError, check_repo_id, push_run

__all__ = ["PushError", "check_repo_id", "dataset_card", "model_card", "push_run"]
