"""The command line of the reshard: train/reshard.py, `mode-reshard`, `python -m modeling_mode.lib.reshard`."""

import logging

from ..core import cli
from .run import ReshardArguments, reshard

# train/reshard.py's --help (and `mode-reshard`'s, `python -m modeling_mode.lib.reshard`'s).
DESCRIPTION = """\
Write each coarse cluster's pairs to its own webdataset shards, in one pass over the corpus, so that each expert
reads only its own share of it (`train/expert.py --streaming --dataset OUTPUT/cluster-K --cluster all`).

    python train/reshard.py --dataset corpus/ --labels runs/clusters/labels --output runs/resharded \\
        --shard-size 10000

`mode-reshard` and `python -m modeling_mode.lib.reshard` take the same flags.

--dataset is the corpus the labels table (train/cluster.py's OUTPUT/labels) was made from: a folder of parquet files
or webdataset .tar shards, or a Hub dataset id. OUTPUT/cluster-K/shard-NNNNN.tar holds cluster K's pairs; pairs
without a cluster are left out. A killed run resumes where it stopped when run again with the same flags: the shards
it had written are kept, the others written. OUTPUT/manifest.json, written last, says the output is complete.
"""


def main(argv: list[str] | None = None) -> dict:
    """train/reshard.py: the reshard, logging its progress; returns its manifest."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S")
    logging.getLogger("modeling_mode").setLevel(logging.INFO)
    return reshard(cli.parse(ReshardArguments, DESCRIPTION, argv))


def command() -> None:
    """The command line (`mode-reshard`, `python -m modeling_mode.lib.reshard`, train/reshard.py): `main`, bad input
    ending with exit status 2 (`cli.run`)."""
    cli.run(main)
