"""`TrainingData`: what a run trains on (its pairs, checked up front) and this process's micro-batches.

The dataset-level pieces (loading, the cluster filter, augmentation, the reproducible sampler) are in
`modeling_mode.lib.data.pairs`; this module puts them together for one run of one process.
"""

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ...families import FAMILIES, Family
from ..clustering.clustered_corpus import InMemoryCorpus
from ..core.errors import InputError
from ..data.pairs import (
    NO_CLUSTER,
    GlobalBatchSampler,
    PairCollator,
    PairDataset,
    PairTransform,
    PatchSequences,
    PixelNormalizer,
    StreamingPairs,
    caption_mask,
    check_column_types,
    check_columns,
    cluster_ids,
    is_saved_dataset,
    load_pairs,
    stream_columns,
    streamed_data_files,
    takes_patch_sequences,
)
from ..reshard.outputs import check_finished_reshard
from .arguments import ExpertTrainingArguments
from .streams import LabelledStream, PlainStream


def check_cluster_id(cluster: int | None, num_experts: int, source: str) -> None:
    """Refuse an expert's --cluster that the clustering has not: say which ids it has."""
    if cluster is not None and cluster >= num_experts:
        ids = f"ids 0 to {num_experts - 1}" if num_experts > 0 else "no cluster id"
        raise InputError(f"--cluster {cluster}: {source} has {num_experts} clusters ({ids}).")


class TrainingData:
    """The run's pairs, checked up front, and the iterator of this process's micro-batches from a given step."""

    def __init__(self, args: ExpertTrainingArguments, accelerator: Accelerator):
        self.args = args
        self.cluster = args.cluster_id
        self.accelerator = accelerator
        # (epoch, micro-batches read in it[, each loader worker's position, whose turn]) of a streamed run, for its
        # checkpoints: the positions of a plain stream of data files (`PlainStream.position`)
        self.stream_position = (0, 0)
        self.coarse_ids = self.without_caption = self.pairs = self.labelled_stream = self.plain_stream = None
        # set by `micro_batches`, which knows the image processor; used by `to_device`
        self.normalize_pixels = self.patch_sequences = None
        check_finished_reshard(args.dataset)
        if args.labels and args.streaming:
            self.labelled_stream = self.open_labelled_stream()
            return
        if args.streaming and (files := streamed_data_files(args.dataset, args.split)):
            self.plain_stream = PlainStream(args, files, accelerator.process_index, accelerator.num_processes)
            return
        cluster_column = None if self.cluster is None or args.labels else args.cluster_column
        needed = [args.image_column, args.caption_column, *([cluster_column] if cluster_column else [])]
        self.pairs = load_pairs(args.dataset, args.split, args.streaming, needed, args.caption_column)
        columns = stream_columns(self.pairs) if args.streaming else self.pairs.column_names
        check_columns(columns, args.image_column, args.caption_column, cluster_column)
        check_column_types(self.pairs.features, args.image_column, args.caption_column)
        if not args.streaming:  # a stream drops the pairs without a caption as they come (StreamingPairs)
            self.coarse_ids, self.without_caption = self.usable_coarse_ids()
            self.sampler(0)  # refuses now a cluster without pairs, or fewer pairs than one global batch

    def open_labelled_stream(self) -> LabelledStream:
        """This process's stream of data files joined with --labels, refused now if it gives no full batch."""
        args, accelerator = self.args, self.accelerator
        if is_saved_dataset(args.dataset):
            raise InputError(
                f"--labels with --streaming reads data files (parquet or .tar); --dataset {args.dataset!r} is a "
                "saved dataset: train on it without --streaming (its rows are joined with the table by index)."
            )
        stream = LabelledStream(args, accelerator.process_index, accelerator.num_processes)
        check_cluster_id(self.cluster, stream.corpus.table.meta["num_experts"], f"--labels {args.labels!r}")
        if sum(stream.batch_counts()) == 0:
            raise InputError(
                f"Process {accelerator.process_index}'s data files hold no full batch of {args.batch_size} of this "
                f"run's pairs (the labels table counts {sum(stream.run_pairs.values())})."
            )
        return stream

    @property
    def global_batch_size(self) -> int:
        """Pairs per optimizer step, over every process and micro-batch."""
        args = self.args
        return args.batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes

    def usable_coarse_ids(self) -> tuple[np.ndarray, int]:
        """Each row's coarse cluster id, NO_CLUSTER for rows without a usable caption; and how many those are.

        The seed trains on every cluster: its rows are all cluster 0 (a --labels table is still read, to check that
        it is of these pairs).
        """
        args = self.args
        if args.labels:  # joined by row, refused unless of these pairs
            corpus = InMemoryCorpus.joined(self.pairs, args.dataset, args.split, args.labels, args.caption_column)
            coarse_ids = corpus.ids("coarse_id")
            check_cluster_id(self.cluster, corpus.table.meta["num_experts"], f"--labels {args.labels!r}")
        if self.cluster is None:
            coarse_ids = np.zeros(len(self.pairs), dtype=np.int64)
        elif not args.labels:
            coarse_ids = cluster_ids(self.pairs, args.cluster_column)
            experts = int(coarse_ids.max()) + 1 if len(coarse_ids) else 0
            check_cluster_id(self.cluster, experts, f"--dataset {args.dataset!r}'s column {args.cluster_column!r}")
        captioned = caption_mask(self.pairs, args.caption_column)
        if not captioned.any():
            raise InputError(
                f"--dataset {args.dataset!r}: no pair has a usable caption (a non-blank string) in column "
                f"{args.caption_column!r} (--caption-column)."
            )
        coarse_ids[~captioned] = NO_CLUSTER
        return coarse_ids, len(captioned) - int(captioned.sum())

    def sampler(self, start_step: int) -> GlobalBatchSampler:
        args, accelerator = self.args, self.accelerator
        return GlobalBatchSampler(
            self.coarse_ids,
            self.cluster,
            args.out_of_cluster_ratio,
            args.seed,
            args.batch_size,
            args.gradient_accumulation_steps,
            accelerator.process_index,
            accelerator.num_processes,
            start_step,
            args.max_steps,
        )

    def summary(self) -> dict:
        """What the run trains on, for training_args.json."""
        if self.labelled_stream is not None:
            return {
                "streaming": True,
                "labels": self.args.labels,
                "main_process_pairs_per_epoch": sum(self.labelled_stream.run_pairs.values()),
            }
        if self.args.streaming:
            return {"streaming": True}
        sampler = self.sampler(0)
        in_cluster = int((self.coarse_ids == (0 if self.cluster is None else self.cluster)).sum())
        return {
            "dataset_pairs": len(self.pairs),
            "pairs_without_caption": self.without_caption,
            "cluster_pairs": in_cluster,
            "out_of_cluster_pairs_per_epoch": sampler.rows_per_epoch - in_cluster,
            "steps_per_epoch": sampler.steps_per_epoch,
        }

    def describe(self) -> str:
        """What the run trains on, in a sentence for the log."""
        args = self.args
        counts = None if args.streaming else self.summary()
        count = "" if counts is None else f"{counts['cluster_pairs']} "
        pairs = f"{count or 'all '}pairs" if self.cluster is None else f"cluster {self.cluster}'s {count}pairs"
        if self.cluster is not None and args.out_of_cluster_ratio:
            pairs += f" and --out-of-cluster-ratio {args.out_of_cluster_ratio:g} of the other clusters'"
            if counts is not None:
                pairs += f" ({counts['out_of_cluster_pairs_per_epoch']} pairs an epoch)"
        source = f"--dataset {args.dataset}, split {args.split}"
        if self.labelled_stream is not None:
            stream = self.labelled_stream
            return (
                f"Streaming {pairs} of {source}, joined with the labels table {args.labels}: "
                f"{sum(stream.run_pairs.values())} pairs in this process's {len(stream.files)} data files."
            )
        if counts is None:
            return f"Streaming {pairs} of {source}, skipping those without a usable caption."
        return (
            f"Training on {pairs}, of the {counts['dataset_pairs']} pairs of {source} "
            f"({counts['pairs_without_caption']} without a usable caption are skipped): "
            f"{counts['steps_per_epoch']} steps an epoch."
        )

    def micro_batches(
        self, processor, max_length: int, start_step: int, stream_position=(0, 0), family: Family = FAMILIES["clip"]
    ):
        """This process's micro-batches of a `family` expert, `gradient_accumulation_steps` per optimizer step, from
        `start_step` on; its texts padded as the family's are (SigLIP's to `max_length`).

        Their `pixel_values` are uint8 crops, on the CPU: `to_device` moves a micro-batch to the device and normalises
        them there (and, for SigLIP 2, cuts them into patch sequences).
        """
        args = self.args
        image_processor = processor.image_processor
        self.normalize_pixels = PixelNormalizer(image_processor, self.accelerator.device)
        if takes_patch_sequences(image_processor):
            self.patch_sequences = PatchSequences(image_processor.patch_size)
        transform = PairTransform(image_processor, args.image_column, args.caption_column)
        pad_to_max_length = args.torch_compile or family.padding == "max_length"
        collator = PairCollator(processor.tokenizer, max_length, pad_to_max_length=pad_to_max_length)
        if not args.streaming:
            dataset = PairDataset(self.pairs, transform, args.seed)
            return batches_of(self.loader(dataset, collator, batch_sampler=self.sampler(start_step)))
        if self.labelled_stream is not None:
            self.labelled_stream.transform = transform
            return self.labelled_batches(stream_position, collator)
        if self.plain_stream is not None:
            self.plain_stream.transform = transform
            return self.plain_batches(stream_position, collator)
        stream = StreamingPairs(
            self.pairs,
            transform,
            self.cluster,
            args.cluster_column,
            args.out_of_cluster_ratio,
            args.seed,
            args.shuffle_buffer,
            self.accelerator.process_index,
            self.accelerator.num_processes,
        )
        return self.streamed_batches(stream, stream_position, collator)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A micro-batch of `micro_batches` on the device, its uint8 crops turned into the normalised float32
        `pixel_values` the model takes (as its image processor would give them; SigLIP 2's with its patch inputs)."""
        batch = {name: tensor.to(self.accelerator.device, non_blocking=True) for name, tensor in batch.items()}
        batch["pixel_values"] = self.normalize_pixels(batch["pixel_values"])
        if self.patch_sequences is not None:
            batch.update(self.patch_sequences(batch["pixel_values"]))
        return batch

    def loader(self, dataset, collator: PairCollator, **kwargs) -> DataLoader:
        """A DataLoader of `dataset` with the run's workers. Each loader is iterated once, so its workers need not
        persist (`persistent_workers` keeps them for a loader's next iteration): one loader serves the whole run with
        random access, and a stream has one an epoch, whose workers start from that epoch's seed."""
        workers = self.args.num_workers
        return DataLoader(
            dataset,
            collate_fn=collator,
            num_workers=workers,
            pin_memory=self.accelerator.device.type == "cuda",  # so that `to_device` copies asynchronously
            # uint8 batches: 4 in flight per worker hold half the shared memory that 2 float32 ones did.
            prefetch_factor=4 if workers > 0 else None,
            **kwargs,
        )

    def streamed_batches(self, stream: StreamingPairs, stream_position: tuple[int, int], collator: PairCollator):
        """The micro-batches of a `datasets` stream (a saved dataset, or a Hub dataset of other files than parquet or
        tar), endless epochs from `stream_position`: a resumed run re-reads the batches of its epoch it had trained on
        and drops them."""
        epoch, skip = stream_position
        while True:
            stream.epoch = epoch
            read = 0
            loader = self.loader(stream, collator, batch_size=self.args.batch_size, drop_last=True)
            for read, batch in enumerate(batches_of(loader), 1):
                if read > skip:
                    self.stream_position = (epoch, read)
                    yield batch
            if read == 0:
                raise InputError("The stream holds no full batch of this cluster's pairs for this process.")
            epoch, skip = epoch + 1, 0

    def labelled_batches(self, stream_position: tuple[int, int], collator: PairCollator):
        """The micro-batches of a --labels stream, from `stream_position`: a resumed run starts where it stood,
        skipping the data files it had trained on without reading them (`LabelledStream.start`)."""
        epoch, read = stream_position
        while True:
            self.labelled_stream.start(epoch, read)
            loader = self.loader(self.labelled_stream, collator, batch_size=self.args.batch_size, drop_last=True)
            for batch in batches_of(loader):
                read += 1
                self.stream_position = (epoch, read)
                yield batch
            epoch, read = epoch + 1, 0

    def plain_batches(self, stream_position: tuple, collator: PairCollator):
        """The micro-batches of a plain stream of data files, endless epochs from `stream_position`: (epoch, batches
        read in it, each worker's position, whose turn it is; `PlainStream.position`). A resumed run starts each
        worker where it stood, reading none of the data files it had finished."""
        epoch, read, *where = stream_position
        if read and not where:
            raise InputError(
                "This streamed run's checkpoint does not say where each loader worker stood (written before streams "
                "resumed exactly): resume it with the version that wrote it, or start it again."
            )
        stream = self.plain_stream
        stream.start(epoch, *where)
        while True:
            loader = self.loader(stream, collator, batch_size=self.args.batch_size, drop_last=True)
            for batch in batches_of(loader):
                stream.advance(*batch.pop("stream_position").tolist())
                read += 1
                self.stream_position = (epoch, read, *stream.position())
                yield batch
            if read == 0:
                raise InputError("The stream holds no full batch of this run's pairs for this process.")
            epoch, read = epoch + 1, 0
            stream.start(epoch)


def batches_of(loader: DataLoader):
    """The loader's batches. A DataLoader re-raises a worker's error with the worker's traceback in its message
    ("Caught InputError in DataLoader worker process N.\nOriginal Traceback ...\n<module>.InputError: <message>"):
    an InputError keeps only its own one-line message, as it has without workers."""
    try:
        yield from loader
    except InputError as error:
        message = str(error)
        if "DataLoader worker process" not in message.partition("\n")[0]:
            raise
        raise InputError(message.rstrip().rpartition("\n")[2].partition(": ")[2]) from None
