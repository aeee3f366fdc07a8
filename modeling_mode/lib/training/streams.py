"""Streams of a corpus's data files for training, which resume exactly where they stood without reading what they
had trained on.

Both read this process's data files, each DataLoader worker its own, in an order that is a function of the seed, the
epoch and the files (`DataFileStream`): each worker's files in an order drawn each epoch, each file's pairs shuffled
within windows of --shuffle-buffer pairs, each pair augmented by a generator of its own; the DataLoader takes the
workers' batches in turn (`worker_turns`). So a resumed epoch starts each worker at the file and pair where it stood.
- `LabelledStream` (`--labels`): the files joined on the fly with a clustering's labels table, by (data file, key)
  (`clustered_corpus`). The table says how many pairs each file gives the run before it is read: a checkpoint's count
  of batches places every worker, and a file with no pair of the run is never opened. A pair the table lacks is
  refused with its name, never trained on with another pair's label: the table was made from another version of that
  data file. (With random access, a saved dataset or data files loaded whole, the table is joined by row instead:
  the run then trains exactly as on a labelled copy.)
- `PlainStream` (plain `--streaming`): the run's pairs are known only as each file is read, so every batch says
  where its worker stood, and a checkpoint keeps every worker's position.
"""

import random

import numpy as np
import torch

from ..clustering.clustered_corpus import StreamedCorpus
from ..core.errors import InputError
from ..data.data_files import caption_of
from ..data.pairs import (
    NO_CLUSTER,
    check_data_file_columns,
    decoded_samples,
    has_caption,
    stream_filter,
    usable_captions,
)


def worker_turns(batch_counts: list[int], read: int) -> tuple[list[int], int]:
    """How many of its batches each DataLoader worker had given when `read` batches were read, and whose turn it is.

    A DataLoader takes an iterable dataset's batches from its workers in turn (0, 1, ..., then 0 again), passing over
    a worker once it has none left: round r gives a batch of every worker that has more than r.
    """
    taken, turn = [0] * len(batch_counts), 0
    while read > 0:
        active = [worker for worker, count in enumerate(batch_counts) if count > taken[worker]]
        if not active:
            raise ValueError(f"{read} more batches than the workers' {batch_counts}")
        for worker in active[:read]:
            taken[worker] += 1
        turn = active[read] if read < len(active) else 0
        read -= min(read, len(active))
    return taken, turn


class DataFileStream(torch.utils.data.IterableDataset):
    """This process's share of a corpus's data files, the run's pairs of each (`run_samples`) shuffled and augmented
    by `transform` (a PairTransform, set before iterating). Each DataLoader worker reads its own files in an order
    drawn each epoch, each file's pairs in windows of --shuffle-buffer shuffled, each pair augmented by a generator of
    its own; so an epoch is a function of the seed, the epoch and the files, and a resumed one can start each worker
    at the file and pair where it stood (`resume_at`, `first_worker`: set by `start`), reading no file before it."""

    def __init__(self, args, files: list[str], process_index: int, num_processes: int):
        self.seed, self.epoch = args.seed, 0
        self.shuffle_buffer, self.batch_size = args.shuffle_buffer, args.batch_size
        self.num_workers = max(1, args.num_workers)
        self.transform, self.process_index = None, process_index
        self.image_column, self.caption_column = args.image_column, args.caption_column
        self.files = list(enumerate(files))[process_index::num_processes]  # each process its own data files
        # Each worker's (file in its epoch's order, run pairs of that file already given); whose turn it is first.
        self.resume_at, self.first_worker = [(0, 0)] * self.num_workers, 0

    def run_samples(self, index: int, file: str):
        """The run's pairs of data file `index`, in file order."""
        raise NotImplementedError

    def reads(self, index: int) -> bool:
        """Whether data file `index` can hold pairs of the run (else it is not opened)."""
        return True

    def worker_files(self, worker: int) -> list[tuple[int, str]]:
        return self.files[worker :: self.num_workers]

    def file_order(self, worker: int) -> np.ndarray:
        """The order in which `worker` reads its data files this epoch (positions in `worker_files`)."""
        return np.random.default_rng([self.seed, self.epoch, self.process_index, worker]).permutation(
            len(self.worker_files(worker))
        )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info else 0) + self.first_worker) % self.num_workers
        files, order = self.worker_files(worker), self.file_order(worker)
        first, skip = self.resume_at[worker]
        for position in range(first, len(order)):  # the files before `first` were trained on: not read again
            index, file = files[order[position]]
            given = skip
            for number, window in enumerate(self.windows(index, file) if self.reads(index) else []):
                shuffled = np.random.default_rng([self.seed, self.epoch, index, number]).permutation(len(window))
                for sample in (window[i] for i in shuffled[skip:]):
                    given += 1
                    yield self.item(self.pair(sample, index, file), worker, position, given)
                skip = max(0, skip - len(window))
            skip = 0

    def windows(self, index: int, file: str):
        """The run's pairs of one data file, in windows of --shuffle-buffer pairs."""
        window = []
        for sample in self.run_samples(index, file):
            window.append(sample)
            if len(window) == self.shuffle_buffer:
                yield window
                window = []
        if window:
            yield window

    def item(self, pair: tuple, worker: int, position: int, given: int):
        """What the stream yields for a pair: the pair (a stream that tracks its position adds it)."""
        return pair

    def caption(self, sample: dict, where: str):
        return caption_of(sample.get(self.caption_column), where)

    def pair(self, sample: dict, index: int, file: str):
        """The transform of one pair (pixels, caption), augmented by a generator of its own: the same on a resume."""
        key = sample["__key__"]
        where = f"pair {key!r} of data file {file!r}"
        image, caption = sample.get(self.image_column), self.caption(sample, where)
        if image is None:
            raise InputError(f"{where} has no image in {self.image_column!r} (--image-column).")
        example = {
            self.image_column: {"bytes": image, "path": None} if isinstance(image, bytes) else image,  # else refused
            self.caption_column: caption,
        }
        return self.transform(example, random.Random(f"{self.seed}/{self.epoch}/{index}/{key}"), where)


class LabelledStream(DataFileStream):
    """The data files joined with the labels table as they are read, filtered to the run's pairs. The table says how
    many pairs each file gives the run before it is read: `start(epoch, batches_read)` places every worker from the
    count of batches alone, and a file without pairs of the run is never opened."""

    def __init__(self, args, process_index: int, num_processes: int):
        self.cluster, self.out_of_cluster_ratio = args.cluster_id, args.out_of_cluster_ratio
        self.corpus = StreamedCorpus.joined(args.dataset, args.split, args.labels, args.caption_column)
        super().__init__(args, self.corpus.files, process_index, num_processes)
        self.columns = [args.image_column, args.caption_column]
        check_data_file_columns(self.corpus.files[0], *self.columns)
        # How many of each of this process's data files' pairs the run takes, from the table alone.
        keep = self.keeps()
        self.run_pairs = {
            index: sum(
                keep(coarse_id, f"{index}/{key}") for key, coarse_id in self.corpus.coarse_ids_by_key(index).items()
            )
            for index, _ in self.files
        }

    def keeps(self):
        """keep(coarse_id, name): whether the run trains on a pair (`name`: its data file's index and key)."""
        if self.cluster is None:
            return lambda coarse_id, name: coarse_id != NO_CLUSTER
        return stream_filter(self.cluster, self.out_of_cluster_ratio, self.seed)

    def reads(self, index: int) -> bool:
        return self.run_pairs[index] > 0

    def batch_counts(self) -> list[int]:
        """Full batches each worker gives an epoch (a DataLoader drops each worker's last, partial batch)."""
        return [
            sum(self.run_pairs[index] for index, _ in self.worker_files(worker)) // self.batch_size
            for worker in range(self.num_workers)
        ]

    def start(self, epoch: int, batches_read: int = 0) -> None:
        """Iterate `epoch` from its batch `batches_read` on: each worker resumes after the pairs of the batches it
        gave, and the DataLoader's first worker plays the worker whose turn it was (a new DataLoader starts with its
        first)."""
        self.epoch = epoch
        taken, self.first_worker = worker_turns(self.batch_counts(), batches_read)
        self.resume_at = [self.position_after(worker, count * self.batch_size) for worker, count in enumerate(taken)]

    def position_after(self, worker: int, pairs: int) -> tuple[int, int]:
        """(file in the epoch's order, pairs of it given) of `worker` once it has given `pairs` pairs."""
        files, order = self.worker_files(worker), self.file_order(worker)
        for position, at in enumerate(order):
            count = self.run_pairs[files[at][0]]
            if pairs < count:
                return position, pairs
            pairs -= count
        return len(order), 0

    def run_samples(self, index: int, file: str):
        """Data file `index`'s pairs of the run, joined with the table by key."""
        keep = self.keeps()
        for sample, coarse_id, _fine_id in self.corpus.labelled_samples(index, self.columns):
            if keep(coarse_id, f"{index}/{sample['__key__']}"):
                yield sample

    def caption(self, sample: dict, where: str):
        caption = super().caption(sample, where)
        if not usable_captions(caption):
            raise InputError(
                f"{where} has a cluster in the labels table {self.corpus.table.folder} but no usable caption in "
                f"column {self.caption_column!r} (--caption-column): the table was made from other captions."
            )
        return caption


class PlainStream(DataFileStream):
    """A corpus's data files streamed without a labels table (`train/expert.py --streaming` on parquet files or
    webdataset shards, local or a Hub dataset's): the run's pairs are those with a usable caption and, with
    --cluster, of that cluster by --cluster-column (with the out-of-cluster share). No file's count is known before it
    is read, so each item says where its worker stood (`item`); the run keeps that per worker, after every batch
    (`advance`), in its checkpoints, and a resumed run starts each worker there (`start`)."""

    def __init__(self, args, files: list[str], process_index: int, num_processes: int):
        super().__init__(args, files, process_index, num_processes)
        self.cluster = args.cluster_id
        self.cluster_column = args.cluster_column if self.cluster is not None else None
        cluster_columns = [self.cluster_column] if self.cluster_column else []
        self.columns = [args.image_column, args.caption_column, *cluster_columns]
        check_data_file_columns(files[0], args.image_column, args.caption_column, self.cluster_column)
        self.keep = stream_filter(self.cluster, args.out_of_cluster_ratio, self.seed) if self.cluster_column else None

    def run_samples(self, index: int, file: str):
        for sample in decoded_samples([file], tuple(self.columns), self.caption_column):
            if has_caption(sample[self.caption_column]) and (
                self.keep is None or self.keep(sample[self.cluster_column], sample[self.caption_column])
            ):
                yield sample

    def item(self, pair: tuple, worker: int, position: int, given: int):
        return (*pair, (worker, position, given))

    def start(self, epoch: int, resume_at: list | None = None, first_worker: int = 0) -> None:
        """Iterate `epoch` from the start, or with each worker at its `resume_at` (a checkpoint's `position`)."""
        if resume_at is not None and len(resume_at) != self.num_workers:
            raise InputError(
                f"This streamed run was checkpointed with {max(1, len(resume_at))} loader workers (--num-workers "
                f"{len(resume_at) if len(resume_at) > 1 else 0}): resume it with as many, not {self.num_workers}."
            )
        self.epoch, self.first_worker = epoch, first_worker
        self.resume_at = [tuple(at) for at in resume_at] if resume_at else [(0, 0)] * self.num_workers

    def advance(self, worker: int, position: int, given: int) -> None:
        """The run has trained on a batch of `worker`'s ending at pair `given` of its file `position`: the next batch
        is the next worker's."""
        self.resume_at[worker] = (position, given)
        self.first_worker = (worker + 1) % self.num_workers

    def position(self) -> tuple[list, int]:
        """Where every worker stands, and whose turn it is: what a checkpoint keeps."""
        return [list(at) for at in self.resume_at], self.first_worker
