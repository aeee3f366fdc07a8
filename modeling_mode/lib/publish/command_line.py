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

import logging

from ..core import cli
from ..hub.commits import exiting_on_push_failure
from .run import PushArguments, push_run


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
