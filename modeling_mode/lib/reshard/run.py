"""Resharding: each coarse cluster's pairs written to its own webdataset shards, in one pass over the corpus, so that
an expert reads its own share of the corpus only, instead of streaming all of it and dropping the other clusters'.

`OUTPUT/cluster-K/shard-NNNNN.tar` holds the pairs of cluster K in corpus order (data file after data file, in
`list_data_files` order, each file's pairs in its order), `--shard-size` to a shard: shard s holds the cluster's pairs
s * shard_size to (s + 1) * shard_size - 1, so which pairs each shard holds follows from the labels table alone.
A pair's sample keeps its members (a tar source) or becomes `jpg`/`png`/... (its image, in its own format) and `txt`
(its caption; a list of captions: `json`) for a parquet source. Its `__key__` is the labels table's key prefixed
by the data file's index in the table (`00003/KEY`): keys are only unique within a data file (a parquet file's are
row indexes), and a webdataset reader merges consecutive samples with the same key. The pairs' ids add no member: the
coarse id is the folder's K, and the fine ids are `OUTPUT/fine_ids/cluster-K/shard-NNNNN.npy`, one per sample in the
shard's order (`fine_ids`). Two small members a sample would cost two tar headers and padded blocks, 1 KB a pair.

Spread over processes (`accelerate launch train/reshard.py`, torchrun): each process writes the shards whose first
pair lies in its share of the data files (`ShardPlan.owner`), reading those files and, for a shard that runs on past
them, the next ones. Which pairs a shard holds does not depend on who writes it: the output is the same bytes.

Resumable per output shard: each shard is written under a scratch name and renamed once it holds its planned pairs,
so a shard that is there is complete; a re-run reads only the data files that hold pairs of missing shards and writes
only those shards. `manifest.json` says with which settings the output is written (before the first shard) and,
rewritten last with `finished` by the main process once every process's shards are there, what it holds: the output
is complete only then.
"""

import io
import json
import logging
import posixpath
import tarfile
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from PIL import Image, UnidentifiedImageError

from ..clustering.clustered_corpus import StreamedCorpus
from ..clustering.labels_table import LabelsTable
from ..core.checks import check_output_dir
from ..core.errors import InputError
from ..core.files import atomic_path, read_json, write_json, writing_lock
from ..core.resume_guard import check_same_settings
from ..data.data_files import write_tar_sample
from ..data.pairs import NO_CLUSTER, check_data_file_columns
from .outputs import MANIFEST, fine_ids_path, shard_path

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif"}  # PIL format -> member extension, where it is not the lowercase


@dataclass
class ReshardArguments:
    """Flags of `train/reshard.py`."""

    dataset: str = field(
        metadata={
            "help": "The corpus the labels table was made from: a folder of data files (parquet or webdataset .tar "
            "shards) or a Hub dataset id.",
            "aliases": ["--dataset_name"],
        }
    )
    labels: str = field(metadata={"help": "The clustering run's labels table (its OUTPUT/labels)."})
    output: str = field(
        metadata={"help": "Folder of the cluster-K/shard-NNNNN.tar shards.", "aliases": ["--output_dir"]}
    )
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    shard_size: int = field(default=10_000, metadata={"help": "Pairs per output shard (a cluster's last: fewer)."})
    image_column: str = field(default="image", metadata={"help": "Parquet sources: the column of the images."})
    caption_column: str = field(default="caption", metadata={"help": "Parquet sources: the column of the captions."})

    def __post_init__(self):
        if not self.shard_size >= 1:
            raise InputError(f"--shard-size must be at least 1, got {self.shard_size!r}.")


class ShardPlan:
    """Which output shards each data file feeds, from the labels table's coarse ids alone."""

    def __init__(self, counts: np.ndarray, shard_size: int):
        self.counts = counts  # [data file, cluster]: the cluster's pairs in the file
        self.before = np.cumsum(counts, axis=0) - counts  # [data file, cluster]: the cluster's pairs in earlier files
        self.totals = counts.sum(axis=0)
        self.shard_size = shard_size

    @classmethod
    def from_table(cls, table: LabelsTable, shard_size: int) -> "ShardPlan":
        experts = table.meta["num_experts"]
        counts = [np.bincount(clustered(part["coarse_id"]), minlength=experts) for part in table.parts(["coarse_id"])]
        return cls(np.asarray(counts, dtype=np.int64).reshape(-1, experts), shard_size)

    def shards_of_file(self, file: int) -> set[tuple[int, int]]:
        """(cluster, shard) of every output shard holding pairs of data file `file`."""
        shards = set()
        for cluster in np.flatnonzero(self.counts[file]):
            first, last = self.before[file, cluster], self.before[file, cluster] + self.counts[file, cluster] - 1
            shards.update(
                (int(cluster), shard) for shard in range(first // self.shard_size, last // self.shard_size + 1)
            )
        return shards

    def shard_pairs(self, cluster: int, shard: int) -> int:
        return int(min(self.shard_size, self.totals[cluster] - shard * self.shard_size))

    def num_shards(self, cluster: int) -> int:
        return -(-int(self.totals[cluster]) // self.shard_size)

    def all_shards(self) -> set[tuple[int, int]]:
        return {(cluster, shard) for cluster in range(len(self.totals)) for shard in range(self.num_shards(cluster))}

    def shards_of_process(self, process: int, num_processes: int) -> set[tuple[int, int]]:
        """The shards process `process` writes: those whose first pair lies in its share of the data files, the
        files whose clustered pairs start in the `process`-th of `num_processes` equal parts of the corpus's."""
        per_file = self.counts.sum(axis=1)
        first_pair = np.cumsum(per_file) - per_file
        file_owner = np.minimum(first_pair * num_processes // max(1, int(per_file.sum())), num_processes - 1)
        shards = set()
        for cluster in range(len(self.totals)):
            ends = self.before[:, cluster] + self.counts[:, cluster]  # the cluster's pairs up to each file's end
            starts = np.arange(self.num_shards(cluster)) * self.shard_size
            owners = file_owner[np.searchsorted(ends, starts, side="right")]
            shards.update((cluster, int(shard)) for shard in np.flatnonzero(owners == process))
        return shards


def clustered(coarse_ids) -> np.ndarray:
    coarse_ids = np.asarray(coarse_ids)
    return coarse_ids[coarse_ids != NO_CLUSTER]


class ShardWriter:
    """One output shard being filled: written under a scratch name, renamed into place once it holds `size` pairs
    (its fine ids written first: a shard in place has them)."""

    def __init__(self, output: str, cluster: int, shard: int, size: int):
        self.size, self.path, self.ids = size, shard_path(output, cluster, shard), []
        self.ids_path = fine_ids_path(output, cluster, shard)
        self.files = ExitStack()
        self.tar = self.files.enter_context(tarfile.open(self.files.enter_context(atomic_path(self.path)), "w"))

    def add(self, sample: dict, fine_id: int) -> bool:
        """Write one sample; returns whether the shard is complete (then it is closed and in place)."""
        write_tar_sample(self.tar, sample)
        self.ids.append(fine_id)
        if len(self.ids) == self.size:
            with atomic_path(self.ids_path) as partial, open(partial, "wb") as file:
                np.save(file, np.asarray(self.ids, dtype=np.int32))
            self.files.close()  # closes the tar, then renames it into place
        return len(self.ids) == self.size


def reshard(args: ReshardArguments, on_shard=None) -> dict:
    """Write each cluster's pairs to its own shards (see the module's docstring), this process's share of them;
    returns the manifest.

    `on_shard(path)` is called after each output shard is complete (a test's fault hook)."""
    state = Accelerator()  # one process, or one of `accelerate launch`'s (torchrun's), as the clustering's
    check_output_dir(args.output, "--output", args.dataset, kind="a reshard")
    with writing_lock(args.output) if state.is_main_process else nullcontext():  # one run at a time writes there
        return write_reshard(args, state, on_shard)


def write_reshard(args: ReshardArguments, state: Accelerator, on_shard) -> dict:
    corpus = StreamedCorpus.joined(args.dataset, args.split, args.labels, args.caption_column)
    if corpus.files[0].endswith(".parquet"):  # its image and caption become members: refused now if of no use
        check_data_file_columns(corpus.files[0], args.image_column, args.caption_column)
    meta = corpus.table.meta
    settings = {
        "dataset": args.dataset,
        "split": args.split,
        "data_files": meta["data_files"],
        "clusters_settings": meta["clusters_settings"],
        "shard_size": args.shard_size,
        "image_column": args.image_column,
        "caption_column": args.caption_column,
    }
    manifest_path = Path(args.output, MANIFEST)
    earlier = read_json(manifest_path) if manifest_path.is_file() else None
    if earlier is not None:
        check_same_settings(
            earlier["settings"], settings, f"--output {args.output!r} holds a reshard made",
            "give another --output, or the flags it was made with.",
        )  # fmt: skip
    if earlier is not None and earlier.get("finished"):
        logger.info(f"{args.output} holds this reshard, finished: nothing to do.")
        return earlier
    plan = ShardPlan.from_table(corpus.table, args.shard_size)
    if state.num_processes > 1 and state.is_main_process and not manifest_path.is_file():
        write_json(manifest_path, {"settings": settings})  # before any process's first shard
    state.wait_for_everyone()

    def open_shard(cluster: int, shard: int) -> ShardWriter:
        if not manifest_path.is_file():  # before the first shard: a re-run must use the same settings
            write_json(manifest_path, {"settings": settings})
        return ShardWriter(args.output, cluster, shard, plan.shard_pairs(cluster, shard))

    mine = plan.shards_of_process(state.process_index, state.num_processes)
    logger.info(f"Process {state.process_index} of {state.num_processes} writes {len(mine)} of the "
                f"{len(plan.all_shards())} output shards.")  # fmt: skip
    write_shards(args, corpus, plan, mine, open_shard, on_shard)
    state.wait_for_everyone()  # every process's shards are there
    manifest = {
        "settings": settings,
        "finished": True,
        "clusters": {
            str(cluster): {"pairs": int(plan.totals[cluster]), "shards": plan.num_shards(cluster)}
            for cluster in np.flatnonzero(plan.totals)
        },
        "pairs_without_cluster": int(meta["num_rows"] - plan.totals.sum()),
    }
    if not state.is_main_process:
        return manifest
    if missing := sorted(s for s in plan.all_shards() if not shard_path(args.output, *s).is_file()):
        raise RuntimeError(f"{len(missing)} output shards are missing, e.g. {shard_path(args.output, *missing[0])}.")
    write_json(manifest_path, manifest)  # last: the output is complete
    logger.info(
        f"Wrote the {int(plan.totals.sum())} pairs of {len(manifest['clusters'])} clusters to {args.output}; "
        f"{manifest['pairs_without_cluster']} pairs without a cluster are left out."
    )
    return manifest


def write_shards(
    args: ReshardArguments, corpus: StreamedCorpus, plan: ShardPlan, mine: set, open_shard, on_shard
) -> None:
    """The one pass: every data file that holds pairs of a shard of `mine` not yet written is read, and those shards
    written. A cluster's pairs come in the order of its shards, so each cluster has one shard open at a time."""
    done = {shard for shard in mine if shard_path(args.output, *shard).is_file()}
    if done:
        logger.info(f"Resuming: {len(done)} of this process's {len(mine)} output shards are already written.")
    done |= plan.all_shards() - mine  # other processes' shards
    files = corpus.files
    columns = [args.image_column, args.caption_column] if files[0].endswith(".parquet") else None
    open_shards = {}  # cluster -> (shard, its writer)
    for index, file in enumerate(files):
        pending = plan.shards_of_file(index) - done
        if not pending:
            continue
        logger.info(f"Data file {index + 1}/{len(files)}: {file}")
        for cluster, shard, sample, fine_id in shard_samples(corpus, index, columns, plan, args):
            if (cluster, shard) not in pending:
                continue
            if open_shards.get(cluster, (None,))[0] != shard:
                open_shards[cluster] = (shard, open_shard(cluster, shard))
            writer = open_shards[cluster][1]
            if writer.add(sample, fine_id):
                done.add((cluster, shard))
                if on_shard is not None:
                    on_shard(writer.path)


def shard_samples(corpus: StreamedCorpus, index: int, columns, plan: ShardPlan, args: ReshardArguments):
    """(cluster, output shard, sample to write, fine id) of each clustered pair of data file `index`, joined with its
    part of the labels table by key (`StreamedCorpus.labelled_samples`, which refuses a file and a table that
    disagree)."""
    file = corpus.files[index]
    position = plan.before[index].copy()  # each cluster's pairs written before this one
    for sample, coarse_id, fine_id in corpus.labelled_samples(index, columns):
        if coarse_id == NO_CLUSTER:
            continue
        shard = int(position[coarse_id] // plan.shard_size)
        position[coarse_id] += 1
        members = dict(sample) if columns is None else parquet_members(sample, file, args)
        key = sample["__key__"]
        members["__key__"] = f"{index:05d}/{key}"
        yield coarse_id, shard, members, fine_id


def parquet_members(sample: dict, file: str, args: ReshardArguments) -> dict:
    """A parquet row's image and caption as webdataset members: the image's bytes under its own format's extension,
    the caption as `txt` (a list of captions: `json`)."""
    where = f"row {sample['__key__']} of data file {file!r}"
    image, caption = sample[args.image_column], sample[args.caption_column]
    if isinstance(image, dict):  # the datasets Image feature: {"bytes", "path"}
        image, path = image.get("bytes"), image.get("path")
    else:
        path = None
    if not isinstance(image, bytes):
        raise InputError(f"{where}: column {args.image_column!r} (--image-column) holds no image bytes.")
    if isinstance(caption, list):
        caption_member = {"json": json.dumps(caption).encode()}
    elif isinstance(caption, str):
        caption_member = {"txt": caption.encode()}
    else:
        raise InputError(
            f"{where}: column {args.caption_column!r} (--caption-column) holds {caption!r}, not captions."
        )
    return {image_extension(image, path, where): image, **caption_member}


def image_extension(image: bytes, path: str | None, where: str) -> str:
    """The member extension of an image: its format as PIL reads it from the header, else its path's extension."""
    try:
        image_format = Image.open(io.BytesIO(image)).format  # reads the header only
        return IMAGE_EXTENSIONS.get(image_format, image_format.lower())
    except UnidentifiedImageError:
        extension = posixpath.splitext(path or "")[1].lstrip(".").lower()
        if not extension:
            raise InputError(
                f"{where}: its image is in no format PIL knows, and has no file name to tell it."
            ) from None
        return extension
