"""Change a MODE's experts without retraining the others: new data experts join it (`grow`), or one leaves (`shrink`).

MODE's experts share nothing but the seed they forked from. So new ones can be trained later, from the same seed, on
new data; and one can leave (a data source taken down, a bad crawl). Either way every other expert keeps its weights
exactly: the changed MODE's old experts are the same tensors, byte for byte (`expert_digests` checks it on the saved
files before the output lands), and the router's fine centres gain or lose the changed experts' own. The config's
`changelog` says what changed, when and why, and `expert_lineage` where each expert's data came from; the model card
lists both. The MODE's seed (`seed/`, the checkpoint its experts forked from) stays with it.

Growing (`python train/grow.py --model org/mode-clip --dataset NEW --new-experts 1 --output runs/mode-grown`):

1. the new pairs' captions are embedded with the MODE's router, the clustering's encoder (a MODE routed with its
   clustering's centres as fitted, which records how far its own pairs lay from them);
2. a pair as close to one of its fine centres as its own pairs were (`--fit-quantile` of their distances) fits the
   MODE as it is: it is counted and left to the experts that hold such pairs already (retraining them would change
   them); the others are clustered as the MODE's own pairs were, into new fine clusters and `--new-experts` coarse
   ones (`train/cluster.py --beside`);
3. each new expert forks from the MODE's seed (weights, optimizer, schedule) and trains as its siblings did (their
   recorded settings) on its new cluster (`train/expert.py`, through `--launcher`);
4. the grown MODE is the old one plus the new experts and their fine centres, saved whole or not at all.

Every step's output sits in `--work-dir` (default OUTPUT-work) and is reused when the command runs again: a grow that
was killed resumes.

Shrinking (`python train/shrink.py --model org/mode-clip --remove-expert 2 --reason "..." --output runs/mode-3`)
takes expert 2 and its fine centres out; routing renormalises over the rest.

`mode-grow` and `mode-shrink` take the same flags as the scripts.
"""

import logging
import sys
from pathlib import Path

from ..core import cli
from ..core.entry_points import EntryPointError
from ..hub.commits import exiting_on_push_failure
from ..hub.flags import HubArguments
from ..publish.run import push_run
from .run import GrowArguments, ShrinkArguments, grow, shrink


def push_next_commit(output: Path, args: HubArguments, message: str) -> None:
    """Push the changed MODE in `output` as the next commit of `--hub_model_id`, saying what changed."""
    with exiting_on_push_failure():
        commits = push_run(output, args.hub_model_id, private=args.hub_private_repo, commit_message=message)
    print(f"pushed: {commits[0].commit_url}")


def shrink_main(argv: list[str] | None = None) -> None:
    args = cli.parse(ShrinkArguments, __doc__, argv)
    output = shrink(args.model, args.remove_expert, args.reason, args.output, args.revision, args.overwrite_output_dir)
    print(f"MODE model without expert {args.remove_expert} saved to {output}")
    if args.push_to_hub:
        push_next_commit(output, args, f"Remove expert {args.remove_expert}: {args.reason}")


def grow_main(argv: list[str] | None = None) -> None:
    args = cli.parse(GrowArguments, __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its every request at INFO would bury the steps' lines
    try:
        output = grow(args)
    except EntryPointError as error:  # the step's own error, reported to grow; its exit status is kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.returncode)
    print(f"MODE model grown by {args.new_experts} expert(s) saved to {output}")
    if args.push_to_hub:
        push_next_commit(output, args, f"Add {args.new_experts} expert(s) trained on {args.dataset}")


def shrink_command() -> None:
    """`mode-shrink` and train/shrink.py."""
    cli.run(shrink_main)


def grow_command() -> None:
    """`mode-grow` and train/grow.py."""
    cli.run(grow_main)
