"""The command line of a clustering run: train/cluster.py, `mode-cluster`, `python -m modeling_mode.lib.clustering`:
the run (`run`), then its push to a Hub dataset repo if asked for (`push`)."""

import logging

from accelerate import Accelerator
from huggingface_hub import HfApi

from ..core import cli
from ..hub.commits import exiting_on_push_failure
from .push import push_clustered_dataset
from .run import ClusterArguments, cluster

logger = logging.getLogger(__name__)
# train/cluster.py's --help (and `mode-cluster`'s, `python -m modeling_mode.lib.clustering`'s).
DESCRIPTION = """\
Cluster an image-caption corpus into MODE's data experts: caption embeddings, then two-level balanced k-means.

    accelerate launch train/cluster.py --dataset PATH_OR_HUB_ID --caption-column caption \\
        --encoder PATH_OR_HUB_ID --fine-clusters 1024 --experts 4 --output runs/clusters \\
        [--streaming [--embeddings-dtype float16] [--keep-embeddings]] \\
        [--push_to_hub --hub_model_id ORG/NAME [--hub_private_repo]]

(`mode-cluster` and `python -m modeling_mode.lib.clustering` take the same flags.) Writes, in --output: `labels/` (per
pair: its data file and key, or row index, and int32 `fine_id`, `coarse_id`, -1 for pairs without a caption;
`clustering.labels_table`), `clusters.safetensors` (`fine_centroids`, `coarse_centroids`, `fine_to_coarse`),
`clusters.json` (the run's report, written last) and `embeddings/` (one memory-mappable shard per --shard-rows pairs,
or per data file). Without --streaming the corpus is loaded with `datasets` and `dataset/`, a copy of it plus `fine_id`
and `coarse_id`, is written too. With --streaming the data files (parquet or webdataset .tar, of a folder or a Hub
dataset) are read one at a time, their captions only: no image is read into memory or copied; the embeddings are
deleted at the end unless --keep-embeddings. Each process embeds its own shards; the main process fits and assigns.
Re-running the same command resumes: finished shards and a fit with the same settings are reused. --push_to_hub then
sends the labelled pairs (with --streaming, the labels table) and centroids to a Hub dataset repo.
"""


def main(argv: list[str] | None = None) -> dict | None:
    """train/cluster.py: the clustering run, then its push if asked for; returns the report (main process only)."""
    args = cli.parse(ClusterArguments, DESCRIPTION, argv)
    accelerator = Accelerator()
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    report = cluster(args, accelerator)
    if report is not None and args.push_to_hub:  # the main process, once the run is complete on disk
        with exiting_on_push_failure():
            commit = push_clustered_dataset(HfApi(), args.output, args.hub_model_id, private=args.hub_private_repo)
        logger.info(f"pushed to {commit.commit_url}")
    return report


def command() -> None:
    """The command line (`mode-cluster`, `python -m modeling_mode.lib.clustering`, train/cluster.py): `main`, bad
    input ending with exit status 2 (`cli.run`)."""
    cli.run(main)
