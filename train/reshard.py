"""Write each coarse cluster's pairs to its own webdataset shards, in one pass over the corpus, so that each expert
reads only its own share of it (`train/expert.py --streaming --dataset OUTPUT/cluster-K --cluster all`).

    python train/reshard.py --dataset corpus/ --labels runs/clusters/labels --output runs/resharded \\
        --shard-size 10000

--dataset is the corpus the labels table (train/cluster.py's OUTPUT/labels) was made from: a folder of parquet files
or webdataset .tar shards, or a Hub dataset id. OUTPUT/cluster-K/shard-NNNNN.tar holds cluster K's pairs; pairs
without a cluster are left out. A killed run resumes where it stopped when run again with the same flags: the shards
it had written are kept, the others written. OUTPUT/manifest.json, written last, says the output is complete.
"""

import logging

from modeling_mode.lib import cli
from modeling_mode.lib.reshard import ReshardArguments, reshard


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S")
    logging.getLogger("modeling_mode").setLevel(logging.INFO)
    return reshard(cli.parse(ReshardArguments, __doc__, argv))


if __name__ == "__main__":
    cli.run(main)
