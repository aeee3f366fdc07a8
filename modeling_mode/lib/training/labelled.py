"""Training on the original pairs of a corpus, joined on the fly with a clustering's labels table (`--labels`).

The labels table (`modeling_mode.lib.labels_table`) holds each pair's coarse cluster beside the corpus, not in a copy
of it. With random access (a saved dataset, or data files loaded whole) it is joined by row: the run then trains
exactly as on a labelled copy. Streamed (`--streaming` over parquet files or webdataset shards), it is joined by (data
file, key) as each file is read: `LabelledStream`. Both joins are `clustered_corpus`'s. A pair that the table lacks is
refused with its name, never trained on with another pair's label: the table was made from another version of that
data file.

A labelled stream knows from the table how many pairs each data file gives the run before reading it; so a resumed run
skips the data files it had trained on without reading them, and restarts exactly where it stood. For that, its order
is a function of the seed, the epoch and the files: each DataLoader worker reads its own data files in an order drawn
each epoch, each file's pairs shuffled within windows of --shuffle-buffer pairs, each pair augmented by its own
generator; the DataLoader takes the workers' batches in turn (`worker_turns`).
"""

import random

import numpy as np
import torch

from ..clustered_corpus import StreamedCorpus
from ..data import NO_CLUSTER, check_columns, stream_filter, usable_captions
from ..data_files import caption_of, columns_of
from ..errors import InputError


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


class LabelledStream(torch.utils.data.IterableDataset):
    """This process's share of a corpus's data files, joined with the labels table as they are read, filtered to the
    run's pairs, shuffled and augmented by `transform` (a PairTransform, set before iterating). Call
    `start(epoch, batches_read)` before iterating an epoch."""

    def __init__(self, args, process_index: int, num_processes: int):
        self.seed, self.epoch = args.seed, 0
        self.cluster, self.out_of_cluster_ratio = args.cluster_id, args.out_of_cluster_ratio
        self.shuffle_buffer, self.batch_size = args.shuffle_buffer, args.batch_size
        self.num_workers = max(1, args.num_workers)
        self.transform, self.process_index = None, process_index
        self.image_column, self.caption_column = args.image_column, args.caption_column
        self.corpus = StreamedCorpus.joined(args.dataset, args.split, args.labels, args.caption_column)
        self.columns = [args.image_column, args.caption_column]
        check_columns(columns_of(self.corpus.files[0]), *self.columns, None)
        # Each process reads its own data files; how many of each one's pairs the run takes, from the table alone.
        self.files = list(enumerate(self.corpus.files))[process_index::num_processes]
        keep = self.keeps()
        self.run_pairs = {
            index: sum(
                keep(coarse_id, f"{index}/{key}") for key, coarse_id in self.corpus.coarse_ids_by_key(index).items()
            )
            for index, _ in self.files
        }
        self.skips, self.first_worker = [0] * self.num_workers, 0

    def keeps(self):
        """keep(coarse_id, name): whether the run trains on a pair (`name`: its data file's index and key)."""
        if self.cluster is None:
            return lambda coarse_id, name: coarse_id != NO_CLUSTER
        return stream_filter(self.cluster, self.out_of_cluster_ratio, self.seed)

    def worker_files(self, worker: int) -> list[tuple[int, str]]:
        return self.files[worker :: self.num_workers]

    def batch_counts(self) -> list[int]:
        """Full batches each worker gives an epoch (a DataLoader drops each worker's last, partial batch)."""
        return [
            sum(self.run_pairs[index] for index, _ in self.worker_files(worker)) // self.batch_size
            for worker in range(self.num_workers)
        ]

    def start(self, epoch: int, batches_read: int = 0) -> None:
        """Iterate `epoch` from its batch `batches_read` on: each worker skips the pairs of the batches it gave, and
        the DataLoader's first worker plays the worker whose turn it was (a new DataLoader starts with its first)."""
        self.epoch = epoch
        taken, self.first_worker = worker_turns(self.batch_counts(), batches_read)
        self.skips = [batches * self.batch_size for batches in taken]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info else 0) + self.first_worker) % self.num_workers
        files = self.worker_files(worker)
        skip = self.skips[worker]
        for position in np.random.default_rng([self.seed, self.epoch, self.process_index, worker]).permutation(
            len(files)
        ):
            index, file = files[position]
            if self.run_pairs[index] <= skip:  # trained on before a resume: not read again
                skip -= self.run_pairs[index]
                continue
            for number, window in enumerate(self.windows(index)):
                order = np.random.default_rng([self.seed, self.epoch, index, number]).permutation(len(window))
                for sample in (window[i] for i in order[skip:]):
                    yield self.pair(sample, index, file)
                skip = max(0, skip - len(window))

    def windows(self, index: int):
        """The run's pairs of one data file, in windows of --shuffle-buffer pairs, joined with the table by key."""
        keep, window = self.keeps(), []
        for sample, coarse_id, _fine_id in self.corpus.labelled_samples(index, self.columns):
            if keep(coarse_id, f"{index}/{sample['__key__']}"):
                window.append(sample)
            if len(window) == self.shuffle_buffer:
                yield window
                window = []
        if window:
            yield window

    def pair(self, sample: dict, index: int, file: str):
        """The transform of one pair (pixels, caption), augmented by a generator of its own: the same on a resume."""
        key = sample["__key__"]
        where, table = f"pair {key!r} of data file {file!r}", self.corpus.table.folder
        image, caption = sample.get(self.image_column), caption_of(sample.get(self.caption_column), where)
        if image is None:
            raise InputError(f"{where} has no image in {self.image_column!r} (--image-column).")
        if not usable_captions(caption):
            raise InputError(
                f"{where} has a cluster in the labels table {table} but no usable caption in column "
                f"{self.caption_column!r} (--caption-column): the table was made from other captions."
            )
        example = {
            self.image_column: image if isinstance(image, dict) else {"bytes": image, "path": None},
            self.caption_column: caption,
        }
        return self.transform(example, random.Random(f"{self.seed}/{self.epoch}/{index}/{key}"), where)
