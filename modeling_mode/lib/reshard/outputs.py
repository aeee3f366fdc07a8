"""A reshard's outputs as the training reads them: `OUTPUT/cluster-K/shard-NNNNN.tar`, the fine ids beside them
(`fine_ids`), and `manifest.json`, finished last: one cluster's shards of a reshard that has not finished are refused
(`check_finished_reshard`)."""

from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.files import read_json

MANIFEST = "manifest.json"
FINE_IDS = "fine_ids"  # OUTPUT/fine_ids/cluster-K/shard-NNNNN.npy


def check_finished_reshard(dataset: str) -> None:
    """Refuse to read one cluster's shards (`OUTPUT/cluster-K`) of a reshard that has not finished: its shards are
    some of the cluster's pairs, not all (a killed run is resumed by running it again)."""
    manifest = Path(dataset).parent / MANIFEST
    if Path(dataset).is_dir() and manifest.is_file() and not read_json(manifest).get("finished"):
        raise InputError(
            f"--dataset {dataset!r} is a cluster of the reshard {str(manifest.parent)!r}, which has not finished: "
            "run train/reshard.py again to complete it."
        )


def shard_path(output: str, cluster: int, shard: int) -> Path:
    return Path(output, f"cluster-{cluster}", f"shard-{shard:05d}.tar")


def fine_ids_path(output: str, cluster: int, shard: int) -> Path:
    return Path(output, FINE_IDS, f"cluster-{cluster}", f"shard-{shard:05d}.npy")


def fine_ids(output: str, cluster: int, shard: int) -> np.ndarray:
    """The fine cluster id of each pair of an output shard, in the shard's order."""
    return np.load(fine_ids_path(output, cluster, shard))
