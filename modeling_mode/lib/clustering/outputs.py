"""A clustering run's outputs on disk, as its consumers (assembly, growth, the push, the main job) read them.

`clusters.safetensors` holds the fit (`Clusters`: fine and coarse centres, each fine cluster's expert) with the
settings it was made with in its metadata (`save_clusters`, `load_clusters`); `clusters.json`, the run's report, is
written last. A folder holds a finished run only if both are there and describe the same fit (`read_finished_run`):
a run killed while re-clustering into the same folder is never taken for a finished one. The labels table
(`labels_table`) and the labelled copy `dataset/` (`clustered_corpus`) are read through their own modules.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..core.errors import InputError
from ..core.files import atomic_path, read_json

CLUSTERS_JSON = "clusters.json"  # the run's report, written last: a clustering run is finished when it is there
LABELLED_COPY = "dataset"  # an in-memory clustering's copy of its corpus with ID_COLUMNS, in its output folder
CLUSTERS_FILE = "clusters.safetensors"


@dataclass
class Clusters:
    """What assigning pairs and routing need: fine centres, coarse centres, and each fine cluster's expert."""

    fine_centroids: np.ndarray  # float32 [m, d], L2-normalised
    coarse_centroids: np.ndarray  # float32 [n, d], L2-normalised
    fine_to_coarse: np.ndarray  # int64 [m]
    method: str
    fit_sizes: np.ndarray  # fine cluster sizes on the fitting sample

    @property
    def num_fine_clusters(self) -> int:
        return len(self.fine_centroids)

    @property
    def num_experts(self) -> int:
        return len(self.coarse_centroids)

    @property
    def embed_dim(self) -> int:
        return self.fine_centroids.shape[1]


def save_clusters(path: str | os.PathLike, clusters: Clusters, settings: dict) -> None:
    """clusters.safetensors with `fine_centroids`, `coarse_centroids`, `fine_to_coarse`; the run's settings, the
    method and the fit sizes go in its metadata, so a re-run can tell whether the fit is still what it asks for."""
    tensors = {
        "fine_centroids": clusters.fine_centroids,
        "coarse_centroids": clusters.coarse_centroids,
        "fine_to_coarse": clusters.fine_to_coarse,
    }
    metadata = {
        "settings": json.dumps(settings, sort_keys=True),
        "method": clusters.method,
        "fit_sizes": json.dumps(clusters.fit_sizes.tolist()),
    }
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def load_clusters(path: str | os.PathLike) -> tuple[Clusters, dict]:
    """(clusters, settings they were fitted with) from a clusters.safetensors file; InputError if it is not one."""
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist: expected a clusters.safetensors from train/cluster.py.")
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} is not a clusters.safetensors from train/cluster.py ({error}).") from error
    missing = {"fine_centroids", "coarse_centroids", "fine_to_coarse"} - set(tensors)
    if missing:
        raise InputError(f"{path} lacks the tensors {sorted(missing)}: it is not a clustering output.")
    fine_to_coarse = tensors["fine_to_coarse"].astype(np.int64)
    method = metadata.get("method", "two-level")
    fit_sizes = metadata.get("fit_sizes")
    clusters = Clusters(
        fine_centroids=tensors["fine_centroids"].astype(np.float32),
        coarse_centroids=tensors["coarse_centroids"].astype(np.float32),
        fine_to_coarse=fine_to_coarse,
        method=method,
        fit_sizes=np.array(json.loads(fit_sizes)) if fit_sizes else np.zeros(len(fine_to_coarse), dtype=np.int64),
    )
    return clusters, json.loads(metadata.get("settings", "{}"))


def read_finished_run(folder: str | os.PathLike) -> tuple[Clusters, dict]:
    """(clusters, report) of a finished clustering run in `folder`, which every consumer reads through this.

    Raises InputError unless the run finished and its parts belong together: clusters.json (written last) must be
    there and describe the fit that clusters.safetensors holds, so that a run killed while re-clustering into the
    same folder is never taken for a finished one.
    """
    folder = Path(folder)
    report_path, clusters_path = folder / CLUSTERS_JSON, folder / CLUSTERS_FILE
    if not report_path.is_file() or not clusters_path.is_file():
        raise InputError(
            f"{folder} holds no finished clustering run ({CLUSTERS_JSON} and {CLUSTERS_FILE} of train/cluster.py): "
            "run or resume the clustering first."
        )
    try:
        report = read_json(report_path)
    except json.JSONDecodeError as error:
        raise InputError(f"{report_path} is not a clustering report ({error}).") from error
    clusters, settings = load_clusters(clusters_path)
    if report.get("settings") != settings:
        raise InputError(
            f"{report_path} and {clusters_path} come from different clustering runs (one was interrupted): "
            "re-run train/cluster.py into this folder to finish it."
        )
    return clusters, report


def is_finished_run(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a finished clustering run, by the test of `read_finished_run`."""
    try:
        read_finished_run(folder)
    except InputError:
        return False
    return True
