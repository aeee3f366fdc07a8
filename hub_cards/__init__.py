"""The card templates of MODE runs (`*.md`, package data that `modeling_mode.lib.cards` renders) and push.py, the
command line of `modeling_mode.lib.publish`. The names below are the library's, kept importable from here."""

from modeling_mode.lib.cards import dataset_card, model_card
from modeling_mode.lib.publish import PushError, check_repo_id, push_run

__all__ = ["PushError", "check_repo_id", "dataset_card", "model_card", "push_run"]
