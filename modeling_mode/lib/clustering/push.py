"""A finished clustering run pushed to a Hugging Face Hub dataset repo: its labelled pairs as parquet (a --streaming
run's labels table instead), its centroids and report, and its dataset card.

Everything is checked before the commit (`ClusteredData.check`); the commit lands whole or not at all (`hub.commits`).
What is pushed names no local path: a labels table names a local corpus' data files by their path relative to the
corpus root, and the records go up with absolute paths cut to their last component.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from ..core.files import write_json
from ..hub.cards import TEMPLATES, expert_rows, without_local_paths
from ..hub.commits import check_token, commit_folder
from ..hub.flags import check_repo_id
from .clustered_corpus import InMemoryCorpus
from .labels_table import LABELS_DIR, LABELS_JSON, LabelsTable, part_path
from .outputs import read_finished_run

CLUSTER_FILES = ("clusters.safetensors", "clusters.json")


@dataclass
class ClusteredData:
    """A finished clustering run's pairs with their ids, centroids and card, checked and ready to push as a dataset
    repo: the labelled copy of its pairs (`pairs`) or, for a streaming run, which writes none, its labels table
    (`table`, checked whole; no data file it names is read)."""

    folder: Path
    repo_id: str
    card: DatasetCard
    pairs: datasets.Dataset | None
    table: LabelsTable | None

    @classmethod
    def check(cls, clusters_dir, repo_id: str, license: str = "other") -> "ClusteredData":
        """InputError unless `clusters_dir` holds a finished clustering run with its labelled copy dataset/ (which
        must load) or, streamed, its complete labels table."""
        folder = Path(clusters_dir)
        _, report = read_finished_run(folder)
        if report.get("streaming"):
            table = LabelsTable.of_run(folder, report)
            card = dataset_card(folder, repo_id, license, labels=published_labels(table.meta))
            return cls(folder, repo_id, card, None, table)
        pairs = InMemoryCorpus.labelled_copy(folder, report).dataset
        return cls(folder, repo_id, dataset_card(folder, repo_id, license), pairs, None)

    def push(self, api, **commit_options):
        """The labels, the centroids and the run's report, in one commit."""
        with tempfile.TemporaryDirectory() as folder:
            if self.table is not None:
                write_published_table(self.table, Path(folder))
            else:
                write_parquet_shards(self.pairs, Path(folder))
            for name in CLUSTER_FILES:
                (Path(folder) / name).write_bytes((self.folder / name).read_bytes())
            return commit_folder(api, folder, self.repo_id, card=self.card, repo_type="dataset", **commit_options)


def write_parquet_shards(pairs: datasets.Dataset, folder: Path) -> None:
    """The pairs with their ids, as `data/` parquet shards of at most ~500 MB."""
    num_shards = max(1, pairs.data.nbytes // 500_000_000 + 1)
    for i in range(num_shards):
        shard = pairs.shard(num_shards, i, contiguous=True)
        shard.to_parquet(f"{folder}/data/train-{i:05d}-of-{num_shards:05d}.parquet")


def write_published_table(table: LabelsTable, folder: Path) -> None:
    """`labels/` as published: its parts as they are (every data file is named relative to the corpus root already),
    and labels.json with `published_labels`."""
    (folder / LABELS_DIR).mkdir()
    for part in range(table.num_parts):
        shutil.copyfile(part_path(table.folder, part), part_path(folder / LABELS_DIR, part))
    write_json(folder / LABELS_DIR / LABELS_JSON, published_labels(table.meta))


def published_labels(labels: dict) -> dict:
    """labels.json as published: a local corpus named by its folder's name, and every other local path cut to its
    last component (`without_local_paths`, as the centroids' settings are). Its data files keep their names, relative
    to the corpus root: the published table joins with a copy of the corpus wherever it lies (train/expert.py
    --labels, train/reshard.py --dataset COPY)."""
    root = labels.get("corpus_root") or ""
    if "://" in root:  # a Hub corpus: its id and the commit it was read at are public
        return without_local_paths(labels)
    local_name = Path(os.path.abspath(labels["dataset"])).name
    return without_local_paths({**labels, "dataset": local_name, "corpus_root": Path(os.path.abspath(root)).name})


def push_clustered_dataset(api, clusters_dir, repo_id, *, license="other", **commit_options):
    """Push a finished clustering run's labelled pairs (as parquet) and centroids to the dataset repo `repo_id`."""
    check_repo_id(repo_id)
    check_token(api)
    return ClusteredData.check(clusters_dir, repo_id, license).push(api, **commit_options)


def dataset_card(
    clusters_dir: str | Path, repo_id: str, license: str = "other", labels: dict | None = None
) -> DatasetCard:
    """The dataset card of a finished clustering run's output directory; InputError if the run is not finished.

    `labels`: the labels.json of a streaming run's labels table, as published (`published_labels`), when the table is
    what the repo holds rather than the labelled pairs: the card then says how to join it with the corpus, and its
    metadata makes the table the repo's `train` split."""
    clusters, report = read_finished_run(clusters_dir)
    clustering = without_local_paths(report)
    table_split = [{"split": "train", "path": "labels/part-*.parquet"}]
    card_data = DatasetCardData(
        license=license,
        pretty_name=f"{repo_id.split('/')[-1]}: MODE clusters",
        tags=["clip", "mode", "clustering", "image-text"],
        task_categories=["zero-shot-image-classification"],
        configs=[{"config_name": "default", "data_files": table_split}] if labels else None,
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        dataset_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        clustering=clustering,
        expert_rows=expert_rows(clusters.fine_to_coarse.tolist(), clustering),
        labels=labels,
    )
