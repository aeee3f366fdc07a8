"""The labels table: MODE's cluster ids of every pair of a corpus, kept beside the corpus rather than in a copy of it.

A clustering run (train/cluster.py) writes `OUTPUT/labels/`:
- `part-NNNNN.parquet`, one per data file of the corpus in `data_files.list_data_files` order (NNNNN is the file's
  index there), or one per embedding shard for a saved `datasets` Dataset. Columns: `source` (the data file's name
  relative to the corpus root, `data_files.relative_names`; "" for a saved dataset), `key` (the pair's `__key__` as
  `data_files.read_samples` gives it; the row index for a saved dataset), `row` (int64, the pair's position in the
  whole corpus), `fine_id` and `coarse_id` (int32; -1 for a pair without a usable caption).
- `labels.json`, written last: the table is complete when it is there. It says which corpus the table is of
  (`dataset`, `split`, `caption_column`, `num_rows`, `data_files` [{"path": name, "size", "fingerprint"}]),
  `num_experts`, `num_fine_clusters`, the clustering's `settings` (`clusters_settings`) and `num_parts`.

A table travels (pushed, downloaded): it is checked whole before any use (`LabelsTable`), and it names data files
only relative to the corpus root: which files are read is always the --dataset a user gives, never the table.
A few bytes per pair: the `source` column is dictionary-encoded by parquet, so it costs next to nothing per row.
This module is the table's files; a corpus is joined with its table, in memory or streamed, by `clustered_corpus`.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import InputError
from ..core.files import atomic_path, read_json, write_json
from ..data.data_files import fingerprint, unsafe_name

LABELS_DIR = "labels"  # inside a clustering run's output folder
LABELS_JSON = "labels.json"
SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("key", pa.string()),
        ("row", pa.int64()),
        ("fine_id", pa.int32()),
        ("coarse_id", pa.int32()),
    ]
)


def part_path(folder: str | os.PathLike, part: int) -> Path:
    return Path(folder) / f"part-{part:05d}.parquet"


def describe_files(files: list[str], names: list[str]) -> list[dict]:
    """[{"path", "size", "fingerprint"}] of data files (local paths or fsspec URLs such as hf://), each named by its
    path relative to the corpus root (`data_files.relative_names`): what `labels.json` records so that a table is
    never used with another corpus, nor with a file changed since, whatever its size (`data_files.fingerprint`)."""
    described = []
    for file, name in zip(files, names, strict=True):
        filesystem, path = fsspec.core.url_to_fs(file)
        info = filesystem.info(path)  # once: on the Hub, each is a request
        described.append({"path": name, "size": int(info["size"]), "fingerprint": fingerprint(file, info)})
    return described


def write_labels(folder, part: int, source: str, keys, rows, fine_ids, coarse_ids) -> Path:
    """Write one part of the table (atomically: a crash leaves the old part or the new one) and return its path."""
    table = pa.table(
        {
            "source": pa.array([source] * len(keys), pa.string()),
            "key": pa.array([str(key) for key in keys], pa.string()),
            "row": np.asarray(rows, dtype=np.int64),
            "fine_id": np.asarray(fine_ids, dtype=np.int32),
            "coarse_id": np.asarray(coarse_ids, dtype=np.int32),
        },
        schema=SCHEMA,
    )
    path = part_path(folder, part)
    with atomic_path(path) as partial:
        pq.write_table(table, partial)
    return path


def finish_labels(folder, meta: dict) -> dict:
    """Check that the parts cover the corpus, then write `labels.json` (last: from then on the table is complete).

    `meta` holds at least `num_rows` and `data_files` (empty for a saved dataset); `num_parts` is added here.
    Raises ValueError (a bug of the writer, not bad input) for missing parts or rows."""
    folder = Path(folder)
    parts = sorted(folder.glob("part-*.parquet"))
    expected = [part_path(folder, part) for part in range(len(parts))]
    if parts != expected or (meta["data_files"] and len(parts) != len(meta["data_files"])):
        raise ValueError(f"{folder} holds parts {[p.name for p in parts]}: not one per data file or shard.")
    num_rows = sum(pq.ParquetFile(part).metadata.num_rows for part in parts)
    if num_rows != meta["num_rows"]:
        raise ValueError(f"{folder} holds {num_rows} labelled pairs, the corpus {meta['num_rows']}.")
    meta = {**meta, "num_parts": len(parts)}
    write_json(folder / LABELS_JSON, meta)
    return meta


def clear_labels(folder) -> None:
    """Make `folder` an unfinished, empty table (a run starting over: no part of another run is left to mix in)."""
    folder = Path(folder)
    (folder / LABELS_JSON).unlink(missing_ok=True)  # first: without it no reader takes the parts for a table
    for part in folder.glob("part-*.parquet"):
        part.unlink()


# labels.json's fields and their types: a table that travels (pushed, downloaded) is checked before any use.
META_FIELDS = {"dataset": str, "split": str, "caption_column": str, "num_rows": int, "data_files": list,
               "num_experts": int, "num_fine_clusters": int, "num_parts": int}  # fmt: skip


def read_meta(folder) -> dict:
    """`labels.json` of a complete table, its fields checked; InputError when `folder` holds none (not a table, or an
    unfinished one) or one that is not a table's."""
    path = Path(folder) / LABELS_JSON
    if not path.is_file():
        raise InputError(
            f"{folder} holds no complete labels table ({LABELS_JSON} of train/cluster.py is missing): "
            "run or resume the clustering first."
        )
    try:
        meta = read_json(path)
    except ValueError as error:
        raise InputError(f"{path} is not valid JSON ({error}): the labels table is damaged.") from None
    wrong = [
        name for name, kind in META_FIELDS.items() if not isinstance(meta, dict) or type(meta.get(name)) is not kind
    ]
    if wrong:
        raise InputError(f"{path} lacks the fields {wrong}, or has them of other types: it is no labels table's.")
    files_ok = all(isinstance(f, dict) and isinstance(f.get("path"), str) and type(f.get("size")) is int
                   and isinstance(f.get("fingerprint"), str) for f in meta["data_files"])  # fmt: skip
    counts_ok = meta["num_experts"] >= 1 and meta["num_fine_clusters"] >= meta["num_experts"] and meta["num_rows"] >= 0
    if not files_ok or not counts_ok:
        raise InputError(
            f"{path}: its data_files ([{{path, size, fingerprint}}]), num_experts or num_fine_clusters are not a "
            "clustering's (a table of an older version: cluster again)."
        )
    for number, file in enumerate(meta["data_files"]):
        if why := unsafe_name(file["path"]):  # before anything could open it, or fetch it
            raise InputError(
                f"{path}: data file {number} is named {file['path'][:100]!r}, and {why}: a labels table names its "
                "data files relative to the corpus root."
            )
    if meta["data_files"] and meta["num_parts"] != len(meta["data_files"]):
        raise InputError(f"{path} lists {len(meta['data_files'])} data files but {meta['num_parts']} parts.")
    return meta


def check_table(folder, meta: dict) -> None:
    """Check every part of a table before any use, one part in memory at a time: it exists and opens, has the
    table's schema, the rows labels.json counts; fine ids in [0, m) and coarse ids in [0, n), both -1 for a pair
    without a caption; each fine cluster in one coarse cluster; keys unique within a part (a data file's keys).
    InputError naming the part and its first bad row."""
    fine_to_coarse, rows = {}, 0
    for part in range(meta["num_parts"]):
        path = part_path(folder, part)
        table = read_part(folder, part)
        if table.schema.remove_metadata() != SCHEMA:
            raise InputError(f"{path} has columns {table.schema.names} of other types than a labels table's.")
        fine, coarse = (table[name].to_numpy(zero_copy_only=False) for name in ("fine_id", "coarse_id"))
        bad = ((fine < -1) | (fine >= meta["num_fine_clusters"]) | (coarse < -1) | (coarse >= meta["num_experts"])
               | ((fine == -1) != (coarse == -1)))  # fmt: skip
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{path} row {row} (key {table['key'][row].as_py()!r}): fine id {fine[row]}, coarse id {coarse[row]} "
                f"outside the clustering's {meta['num_fine_clusters']} fine and {meta['num_experts']} coarse clusters."
            )
        for fine_id, coarse_id in np.unique(np.stack([fine, coarse], axis=1)[fine >= 0], axis=0).tolist():
            if fine_to_coarse.setdefault(fine_id, coarse_id) != coarse_id:
                row = int(np.flatnonzero((fine == fine_id) & (coarse == coarse_id))[0])
                raise InputError(
                    f"{path} row {row}: fine cluster {fine_id} in coarse cluster {coarse_id}, elsewhere in "
                    f"{fine_to_coarse[fine_id]}: the table was edited."
                )
        sources = set(table["source"].unique().to_pylist())
        if sources - {meta["data_files"][part]["path"] if meta["data_files"] else ""}:
            raise InputError(f"{path} labels pairs of {sorted(sources)[:2]}, not of its data file: it was edited.")
        keys = table["key"].to_pylist()
        if len(set(keys)) != len(keys):
            seen = set()
            duplicate = next(key for key in keys if key in seen or seen.add(key))
            raise InputError(f"{path} holds key {duplicate!r} twice: a data file's keys are unique.")
        rows += table.num_rows
    if rows != meta["num_rows"]:
        raise InputError(f"{folder}: its parts hold {rows} rows, its {LABELS_JSON} counts {meta['num_rows']}.")


def read_labels(folder) -> tuple[dict, Iterator[pa.Table]]:
    """(meta, the parts as pyarrow Tables in order): one part in memory at a time, whatever the corpus' size."""
    meta = read_meta(folder)

    def parts() -> Iterator[pa.Table]:
        for part in range(meta["num_parts"]):
            yield read_part(folder, part)

    return meta, parts()


class LabelsTable:
    """A complete labels table, its labels.json read once: a reader of many data files finds each one's part by its
    path in constant time (labels.json lists every data file: reading it per file would cost time quadratic in
    their number)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.meta = read_meta(folder)
        check_table(folder, self.meta)  # whole, before any use: a table travels, and may have been edited
        self.part_of = {file["path"]: part for part, file in enumerate(self.meta["data_files"])}

    @classmethod
    def of_run(cls, clusters: str | os.PathLike, report: dict) -> "LabelsTable":
        """The labels table of a finished clustering run (`report`: its clusters.json), checked to be that run's:
        InputError for a table missing, unfinished or of another run."""
        table = cls(Path(clusters) / LABELS_DIR)
        counts = ("num_experts", "num_fine_clusters")
        if table.meta["clusters_settings"] != report.get("settings") or any(
            table.meta[count] != report.get(count) for count in counts
        ):
            raise InputError(f"{table.folder} is the labels table of another clustering run than {clusters}.")
        return table

    @property
    def names(self) -> list[str]:
        """The data files the table labels, by their names relative to the corpus root, part p labelling file p (none
        for a saved dataset). Names only: which files are read is --dataset's to say, never a table's."""
        return [file["path"] for file in self.meta["data_files"]]

    @property
    def num_parts(self) -> int:
        return self.meta["num_parts"]

    def part(self, part: int, columns: list[str] | None = None) -> pa.Table:
        return read_part(self.folder, part, columns)

    def parts(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The parts in order, one in memory at a time."""
        for part in range(self.num_parts):
            yield self.part(part, columns)

    def part_index(self, source: str) -> int:
        """The part of one data file (`source`: its name relative to the corpus root); InputError naming a data file
        the table does not cover."""
        if source not in self.part_of:
            raise InputError(
                f"data file {source!r} is not in the labels table {self.folder} (it labels {len(self.part_of)} files "
                f"of --dataset {self.meta['dataset']!r}): cluster this corpus, or give the table made from it."
            )
        return self.part_of[source]

    def labels_for(self, source: str) -> dict[str, int]:
        """{key: coarse_id} of one data file's pairs (`source`: its name relative to the corpus root); for a saved
        dataset (source "") the whole table's, keyed by row index. InputError naming a data file the table lacks."""
        parts = range(self.num_parts) if source == "" and not self.part_of else [self.part_index(source)]
        labels = {}
        for part in parts:
            table = self.part(part, columns=["key", "coarse_id"])
            labels.update(zip(table["key"].to_pylist(), table["coarse_id"].to_pylist(), strict=True))
        return labels

    def check_matches(
        self, dataset: str, split: str, files: list[str], names: list[str], num_rows: int | None = None
    ) -> None:
        """`check_labels_match` of this table."""
        check_labels_match(self.meta, dataset, split, files, names, num_rows)


def labels_for(folder, source: str) -> dict[str, int]:
    """`LabelsTable.labels_for` of the table in `folder`, for a reader of one data file."""
    return LabelsTable(folder).labels_for(source)


def check_labels_match(
    meta: dict, dataset: str, split: str, files: list[str], names: list[str], num_rows: int | None = None
) -> None:
    """Refuse a labels table made from another corpus than `dataset`'s `split` read as `files` (its data files as
    `list_data_files` gives them, named `names` relative to the corpus root; both empty for a saved dataset, whose
    `num_rows` is then compared).

    A data file the table lacks is named, as is one whose size or content (`data_files.fingerprint`) changed; a table
    of other files or rows is refused.
    """
    where = f"the labels table of --dataset {meta['dataset']!r} (split {meta['split']!r})"
    if split != meta["split"]:
        raise InputError(f"{where} does not label split {split!r} of --dataset {dataset!r}.")
    if num_rows is not None and num_rows != meta["num_rows"]:
        raise InputError(f"{where} labels {meta['num_rows']} pairs, --dataset {dataset!r} has {num_rows}.")
    recorded = {file["path"]: file for file in meta["data_files"]}
    if bool(files) != bool(recorded):
        made_of = "data files" if recorded else "a saved dataset"
        raise InputError(f"{where} was made from {made_of}, not from --dataset {dataset!r} as read now.")
    for file, name in zip(files, names, strict=True):
        if name not in recorded:
            raise InputError(f"data file {file!r} ({name!r} in --dataset {dataset!r}) is missing from {where}.")
    if len(files) != len(recorded):
        extra = sorted(set(recorded) - set(names))
        raise InputError(f"{where} labels other data files too ({extra[:3]}...): it is of another corpus.")
    for file, now in zip(files, describe_files(files, names)):
        then = recorded[now["path"]]
        if now["size"] != then["size"]:
            raise InputError(
                f"data file {file!r} has {now['size']} bytes but had {then['size']} when {where} was made: it "
                "changed since; cluster again."
            )
        if now["fingerprint"] != then["fingerprint"]:
            raise InputError(
                f"data file {file!r} is not the one {where} was made from: as many bytes, other content (fingerprint "
                f"{now['fingerprint'][:20]}..., then {then['fingerprint'][:20]}...); cluster again."
            )


def read_part(folder, part: int, columns: list[str] | None = None) -> pa.Table:
    """One part of the table (`columns` of it, all when None)."""
    path = part_path(folder, part)
    if not path.is_file():
        raise InputError(f"{path} is missing: the labels table {folder} is incomplete; run the clustering again.")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as error:
        raise InputError(
            f"{path} cannot be read ({type(error).__name__}: {error}): the labels table is damaged."
        ) from None
