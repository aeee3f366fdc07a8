"""A corpus together with its cluster ids: the one place that says which pairs a clustering labelled, with which ids.

Every reader of a clustering reads its pairs through here: the clustering run (`run`), which embeds the corpus
part by part and writes a part of the labels table (`labels_table`) for each; the assembly, which re-expresses the
centroids from the captions the clustering embedded and their fine ids; the push (`push`), which publishes the pairs
with their ids, or the labels table; training with --labels and the reshard, which take each pair's coarse id.

A corpus is read in parts, part p being the clustering's embedding shard p and the labels table's part p, in one of
two layouts (`ClusteredCorpus`):
- `InMemoryCorpus`: a `datasets` Dataset, in parts of `shard_rows` rows, joined with its ids by row: the `fine_id` and
  `coarse_id` columns of the clustering's labelled copy `dataset/`, or a labels table's `row` column (source "", key:
  the row index).
- `StreamedCorpus`: a corpus' data files (`data_files.list_data_files`), one part each, joined with the labels table
  by (data file, key) as each file is read: no image is held in memory or copied, whatever the corpus' size.

`clustering_corpus` is a finished clustering's corpus, in the layout it was clustered in.
"""

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
from datasets import Dataset

from ..core.checks import naming_failures
from ..core.errors import InputError
from ..core.files import atomic_directory
from ..data.data_files import columns_of, corpus_root, list_data_files, read_samples, relative_names
from ..data.pairs import NO_CLUSTER, cluster_ids, is_saved_dataset, load_pairs
from .embedding import (
    CaptionEncoder,
    EmbeddingShards,
    choose_shard_captions,
    data_file_captions,
    embed_corpus,
    embed_data_files,
)
from .labels_table import LabelsTable, describe_files
from .outputs import LABELLED_COPY

logger = logging.getLogger(__name__)
ID_COLUMNS = ("fine_id", "coarse_id")


class ClusteredCorpus(ABC):
    """A corpus read in parts, each joined with its pairs' cluster ids; `table` is its labels table, when it has one.

    `caption_seed` (the clustering's --seed) says which caption of a list the clustering embedded for each pair
    (`embedding.choose_shard_captions`): `clustered_captions` gives those very captions.
    """

    streaming: bool

    def __init__(self, caption_column: str, table: LabelsTable | None = None, caption_seed: int | None = None):
        self.caption_column = caption_column
        self.table = table
        self.caption_seed = caption_seed

    @property
    @abstractmethod
    def num_parts(self) -> int: ...

    @abstractmethod
    def source(self, part: int) -> str:
        """The `source` of a part's pairs in the labels table: its data file, or "" for a Dataset."""

    @property
    @abstractmethod
    def data_files(self) -> list[dict]:
        """[{"path", "size"}] of the data files (`labels_table.describe_files`); empty for a Dataset."""

    @abstractmethod
    def layout(self) -> dict:
        """What the clustering's embeddings are of and how they are sharded (`EmbeddingShards`)."""

    @abstractmethod
    def embed(self, encoder: CaptionEncoder, shards: EmbeddingShards, rank: int, world_size: int, batch_size: int):
        """Embed this process's parts not yet in `shards`, each the caption `caption_seed` chooses for each pair."""

    @abstractmethod
    def embedded_keys(self, shards: EmbeddingShards, part: int) -> list[str]:
        """The keys of a part's pairs, in order, as the embedding pass left them (no data file is read again)."""

    @abstractmethod
    def check_unchanged(self, folder: Path, report: dict) -> None:
        """Refuse (InputError) a corpus that is no longer the one the clustering in `folder` embedded."""

    @abstractmethod
    def clustered_captions(self, part: int) -> tuple[list[str | None], np.ndarray]:
        """The captions the clustering embedded for a part's pairs (None: no usable caption), and their fine ids."""

    def save_labelled_copy(self, labels: Path, output: Path) -> str | None:
        """Write the labelled copy `output/dataset` if this layout makes one; returns its name there."""
        return None


class InMemoryCorpus(ClusteredCorpus):
    """A `datasets` Dataset in parts of `shard_rows` rows, joined with its ids by row: from the dataset's own
    `fine_id` and `coarse_id` columns (the clustering's labelled copy), or from `table`."""

    streaming = False
    root = ""  # no data files: a Dataset's rows are named by their index

    def __init__(self, dataset: Dataset, caption_column: str, shard_rows: int | None = None, **table_and_seed):
        super().__init__(caption_column, **table_and_seed)
        self.dataset = dataset
        self.shard_rows = shard_rows

    @classmethod
    def load(cls, source: str, split: str, caption_column: str, shard_rows: int, caption_seed: int):
        """A corpus to cluster (`data.load_pairs`), refused now without `caption_column`."""
        dataset = load_pairs(source, split)
        if caption_column not in dataset.column_names:
            raise InputError(
                f"The dataset has no caption column {caption_column!r} (--caption-column); "
                f"its columns: {dataset.column_names}."
            )
        return cls(dataset, caption_column, shard_rows, caption_seed=caption_seed)

    @classmethod
    def labelled_copy(cls, clusters: str | os.PathLike, report: dict) -> "InMemoryCorpus":
        """A finished clustering's labelled copy `dataset/` (which must load and hold the captions and fine ids), in
        the parts the clustering embedded."""
        path = str(Path(clusters) / LABELLED_COPY)
        with naming_failures("The clustered pairs", path):
            dataset = load_pairs(path, report.get("split", "train"))
        caption_column = report.get("caption_column", "caption")
        if missing := sorted({caption_column, "fine_id"} - set(dataset.column_names)):
            raise InputError(f"{path!r} has no column {missing}: it is not the clustering's.")
        embeddings = report.get("settings", {}).get("embeddings", {})
        return cls(dataset, caption_column, embeddings.get("shard_rows"), caption_seed=embeddings.get("caption_seed"))

    @classmethod
    def joined(cls, pairs: Dataset, source: str, split: str, labels: str | os.PathLike, caption_column: str):
        """`pairs` (--dataset `source`, loaded whole) joined by row with the labels table in `labels`, checked to be
        of these pairs: webdataset shards loaded whole must also have the table's keys, row by row."""
        table = LabelsTable(labels)
        files = [] if is_saved_dataset(source) else list_data_files(source, split)
        table.check_matches(source, split, files, relative_names(source, files) if files else [], len(pairs))
        corpus = cls(pairs, caption_column, table=table)
        corpus.check_keys(source)
        return corpus

    @property
    def num_rows(self) -> int:
        return len(self.dataset)

    @property
    def num_parts(self) -> int:
        return max(1, -(-self.num_rows // self.shard_rows))

    def rows(self, part: int) -> range:
        return range(part * self.shard_rows, min((part + 1) * self.shard_rows, self.num_rows))

    def source(self, part: int) -> str:
        return ""

    @property
    def data_files(self) -> list[dict]:
        return []

    def layout(self) -> dict:
        fingerprint = getattr(self.dataset, "_fingerprint", None)
        return {"dataset_fingerprint": fingerprint, "num_rows": self.num_rows, "shard_rows": self.shard_rows}

    def embed(self, encoder: CaptionEncoder, shards: EmbeddingShards, rank: int, world_size: int, batch_size: int):
        return embed_corpus(
            self.dataset, self.caption_column, encoder, shards, rank, world_size, batch_size, self.caption_seed
        )

    def embedded_keys(self, shards: EmbeddingShards, part: int) -> list[str]:
        return [str(row) for row in self.rows(part)]

    def check_unchanged(self, folder: Path, report: dict) -> None:
        """The labelled copy holds the pairs the clustering embedded: as many."""
        embedded = embedding_settings(folder, report, ("num_rows", "shard_rows", "embed_dim"))["num_rows"]
        if embedded != self.num_rows:
            raise InputError(
                f"{str(folder / LABELLED_COPY)!r} has {self.num_rows} pairs, but the clustering embedded "
                f"{embedded}: it is not that clustering's dataset."
            )

    @cached_property
    def captions_only(self) -> Dataset:
        return self.dataset.select_columns([self.caption_column])  # images are never decoded

    def clustered_captions(self, part: int) -> tuple[list[str | None], np.ndarray]:
        rows = self.rows(part)
        values = self.captions_only[rows.start : rows.stop][self.caption_column]
        return choose_shard_captions(values, part, self.caption_seed), self.ids("fine_id")[rows.start : rows.stop]

    def ids(self, column: str) -> np.ndarray:
        """Every row's `column` id (`fine_id` or `coarse_id`; NO_CLUSTER for a row the table does not label)."""
        if self.table is None:
            return cluster_ids(self.dataset, column)
        ids = np.full(self.num_rows, NO_CLUSTER, dtype=np.int64)
        for part in self.table.parts(columns=["row", column]):
            ids[part["row"].to_numpy()] = part[column].to_numpy()
        return ids

    def check_keys(self, source: str) -> None:
        """Refuse a table of another order of these pairs: those with keys (`__key__`) must have the table's, by
        row."""
        if "__key__" not in self.dataset.column_names:
            return
        keys = np.empty(self.num_rows, dtype=object)
        for part in self.table.parts(columns=["row", "key"]):
            keys[part["row"].to_numpy()] = part["key"].to_pylist()
        dataset_keys = np.asarray(self.dataset["__key__"], dtype=object)
        if len(mismatch := np.flatnonzero(dataset_keys != keys)):
            row = mismatch[0]
            raise InputError(
                f"row {row} of --dataset {source!r} is pair {dataset_keys[row]!r}, the labels table "
                f"{self.table.folder} has {keys[row]!r} there: it labels another order of these pairs."
            )

    def save_labelled_copy(self, labels: Path, output: Path) -> str:
        """`output/dataset`: the corpus plus `fine_id` and `coarse_id` from the labels table in `labels`, replacing
        the one there as a whole."""
        table = LabelsTable(labels)

        def add_ids(_captions, indices):
            # map hands out batches of shard_rows rows from row 0: batch b is part b of the table
            ids = table.part(indices[0] // self.shard_rows, columns=list(ID_COLUMNS))
            return {column: ids[column].to_numpy() for column in ID_COLUMNS}

        dataset = self.dataset
        if present := [c for c in ID_COLUMNS if c in dataset.column_names]:
            logger.warning(f"replacing the dataset's existing {present} columns")
            dataset = dataset.remove_columns(present)
        cache = output / ".labelled.arrow"
        labelled = dataset.map(
            add_ids,
            input_columns=[self.caption_column],  # only the captions are read: images stay encoded
            with_indices=True,
            batched=True,
            batch_size=self.shard_rows,
            cache_file_name=str(cache),
            load_from_cache_file=False,  # one left by a crashed run holds another run's labels
            new_fingerprint=f"mode-clusters-{os.urandom(8).hex()}",
            desc="writing fine_id / coarse_id",
        )
        with atomic_directory(output / LABELLED_COPY) as scratch:
            labelled.save_to_disk(str(scratch))
        cache.unlink()
        return LABELLED_COPY


class StreamedCorpus(ClusteredCorpus):
    """A corpus' data files, one part each, joined with the labels table by (data file, key) as each is read. The
    files are read for the columns asked for only: a caption column alone leaves every image unread.

    `files` are where the data files are read (as --dataset lists them), `names` what the labels table calls them:
    their paths relative to the corpus root (`data_files.relative_names`)."""

    streaming = True
    num_rows = None  # known once every file is read

    def __init__(self, files: list[str], names: list[str], root: str, caption_column: str, **table_and_seed):
        super().__init__(caption_column, **table_and_seed)
        self.files, self.names, self.root = files, names, root

    @classmethod
    def load(cls, source: str, split: str, caption_column: str, caption_seed: int) -> "StreamedCorpus":
        """A corpus to cluster, refused now if its data files have no `caption_column`."""
        with naming_failures("--dataset", source):
            files = list_data_files(source, split)
        columns = columns_of(files[0])
        if caption_column not in columns:
            raise InputError(
                f"The data files have no caption column {caption_column!r} (--caption-column; in tar shards, a "
                f"member extension): {files[0]!r} has {columns}."
            )
        root = corpus_root(source, files)
        return cls(files, relative_names(source, files), root, caption_column, caption_seed=caption_seed)

    @classmethod
    def of_run(cls, clusters: str | os.PathLike, report: dict, dataset: str | None) -> "StreamedCorpus":
        """A finished streaming clustering's corpus: --dataset `dataset`'s data files (the corpus where it was
        clustered, or a copy of it anywhere), checked against the run's labels table, with the run's caption choice.
        Its table is never asked where to read: it names files only relative to the corpus root."""
        table = LabelsTable.of_run(clusters, report)
        if dataset is None:
            raise InputError(
                f"{clusters} is a streaming clustering of --dataset {table.meta['dataset']!r}: reading its captions "
                "again needs that corpus, given as --dataset (here or at a copy of it)."
            )
        seed = report.get("settings", {}).get("embeddings", {}).get("caption_seed")
        return cls.joined(dataset, table.meta["split"], table, table.meta["caption_column"], caption_seed=seed)

    @classmethod
    def joined(
        cls, source: str, split: str, labels: "str | os.PathLike | LabelsTable", caption_column: str, caption_seed=None
    ) -> "StreamedCorpus":
        """--dataset `source`'s data files joined with a labels table (or the one in folder `labels`), checked to be
        of them (names, sizes, content fingerprints), in the table's order: part p is file p."""
        table = labels if isinstance(labels, LabelsTable) else LabelsTable(labels)
        with naming_failures("--dataset", source):
            files = list_data_files(source, split)
        names = relative_names(source, files)
        table.check_matches(source, split, files, names)
        root, by_name = corpus_root(source, files), dict(zip(names, files))
        in_table_order = [by_name[name] for name in table.names]
        return cls(in_table_order, table.names, root, caption_column, table=table, caption_seed=caption_seed)

    @property
    def num_parts(self) -> int:
        return len(self.files)

    def source(self, part: int) -> str:
        return self.names[part]

    @cached_property
    def data_files(self) -> list[dict]:
        return describe_files(self.files, self.names)  # once: the embeddings' layout and labels.json record the same

    def layout(self) -> dict:
        return {"data_files": self.data_files}  # names, sizes, fingerprints: a changed file is not taken for embedded

    def embed(self, encoder: CaptionEncoder, shards: EmbeddingShards, rank: int, world_size: int, batch_size: int):
        return embed_data_files(
            self.files, self.caption_column, encoder, shards, rank, world_size, batch_size, self.caption_seed
        )

    def embedded_keys(self, shards: EmbeddingShards, part: int) -> list[str]:
        return shards.read_keys(part)

    def check_unchanged(self, folder: Path, report: dict) -> None:
        """The clustering says which captions it embedded (the data files were checked against its table when
        joined, `of_run`; their keys' order is checked as each is read)."""
        embedding_settings(folder, report, ())

    def clustered_captions(self, part: int) -> tuple[list[str | None], np.ndarray]:
        """Data file `part`'s captions as the clustering chose them (`embedding.embed_data_files`), and their fine
        ids. The caption choice draws from one generator in file order: the keys must match the table's one for one,
        in order, not merely as a set."""
        file = self.files[part]
        keys, chosen = data_file_captions(file, self.caption_column, part, self.caption_seed)
        ids = self.table.part(self.table.part_index(self.names[part]), columns=["key", "fine_id"])
        labelled_keys = ids["key"].to_pylist()
        if keys != labelled_keys:
            raise InputError(
                f"data file {file!r} is not the one the labels table {self.table.folder} was made from "
                f"({first_difference(keys, labelled_keys)}): it changed since the clustering; cluster again."
            )
        return chosen, ids["fine_id"].to_numpy().astype(np.int64)

    def coarse_ids_by_key(self, part: int) -> dict[str, int]:
        """{key: coarse_id} of data file `part`'s pairs, from the table alone: the file is not read."""
        return self.table.labels_for(self.names[part])

    def labelled_samples(self, part: int, columns: list[str] | None) -> Iterator[tuple[dict, int, int]]:
        """(sample, coarse_id, fine_id) of each pair of data file `part` (`data_files.read_samples` of `columns`),
        joined with its part of the table by key. A pair the table lacks, or one it has but the file not, is refused:
        the table would be of another version of the file."""
        file, where = self.files[part], f"the labels table {self.table.folder}"
        ids = self.table.part(self.table.part_index(self.names[part]))  # its `source` checked with the table
        by_key = dict(zip(ids["key"].to_pylist(), zip(ids["coarse_id"].to_pylist(), ids["fine_id"].to_pylist())))
        for sample in read_samples(file, columns):
            key = sample["__key__"]
            if key not in by_key:
                raise InputError(f"pair {key!r} of data file {file!r} is not in {where}.")
            yield sample, *by_key.pop(key)
        if by_key:
            raise InputError(f"data file {file!r} lacks pairs {sorted(by_key)[:3]} of {where}.")


def clustering_corpus(clusters: str | os.PathLike, report: dict, dataset: str | None = None) -> ClusteredCorpus:
    """A finished clustering's pairs with their ids (`report`: its clusters.json), in the parts it embedded: a
    streaming run's corpus, --dataset `dataset` (`StreamedCorpus.of_run`), else its labelled copy."""
    if report.get("streaming"):
        return StreamedCorpus.of_run(clusters, report, dataset)
    return InMemoryCorpus.labelled_copy(clusters, report)


def embedding_settings(folder: Path, report: dict, layout: tuple[str, ...]) -> dict:
    """The clustering's embedding settings, which say how it chose the caption it embedded for each pair."""
    meta = report.get("settings", {}).get("embeddings", {})
    unsaid = sorted({"caption_seed", *layout} - set(meta))
    if unsaid:
        raise InputError(
            f"{folder / 'clusters.json'} does not say which captions the clustering embedded (its settings' "
            f"embeddings lack {unsaid}): cluster again with train/cluster.py."
        )
    return meta


def first_difference(keys: list[str], labelled_keys: list[str]) -> str:
    """Where a data file's keys part from its labels part's, for an error message."""
    for at, (key, labelled) in enumerate(zip(keys, labelled_keys)):
        if key != labelled:
            return f"its pair {at} is {key!r}, the table's {labelled!r}"
    return f"it holds {len(keys)} pairs, the table {len(labelled_keys)}"
