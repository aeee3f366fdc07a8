"""A clustering run (train/cluster.py): embed a corpus' captions, fit MODE's clusters, label every pair, report.

The k-means algorithms live in `clustering`; this module is the run around them: its flags, the checks made before
any work, what an earlier run in the same folder lets it reuse, and the order of its writes. A folder is a finished
run or is refused (`clustering.read_finished_run`): clusters.json is written last, and a run whose settings differ
from the folder's removes it before changing anything else.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from tqdm.auto import tqdm

from .clustering import (
    BALANCE,
    CLUSTERS_FILE,
    CLUSTERS_JSON,
    NO_CLUSTER,
    Clusters,
    assign_shards,
    faiss_gpus,
    fit_clusters,
    imbalance,
    load_clusters,
    num_fitted_clusters,
    read_finished_run,
    save_clusters,
)
from .data import load_pairs
from .embedding import POOLINGS, CaptionEncoder, EmbeddingShards, embed_corpus
from .errors import InputError, check_output_dir, naming_failures
from .files import atomic_directory, write_json
from .hub import HubArguments

logger = logging.getLogger(__name__)
ID_COLUMNS = ("fine_id", "coarse_id")


@dataclass
class ClusterArguments(HubArguments):
    """Flags of `train/cluster.py`; `--push_to_hub` sends the labelled pairs and centroids to a dataset repo."""

    dataset: str = field(metadata={"help": "save_to_disk folder, data folder or Hub dataset id."})
    encoder: str = field(metadata={"help": "CLIP checkpoint or AutoModel sentence encoder, path or Hub id."})
    output: str = field(metadata={"help": "Output folder.", "aliases": ["--output_dir"]})
    split: str = field(default="train", metadata={"help": "Split to cluster."})
    caption_column: str = field(default="caption", metadata={"help": "A string or list-of-strings column."})
    pooling: str | None = field(
        default=None, metadata={"help": "Default: projection for CLIP, mean otherwise.", "choices": POOLINGS}
    )
    max_length: int | None = field(default=None, metadata={"help": "Token limit (default: the encoder's)."})
    batch_size: int = field(default=128, metadata={"help": "Captions per encoder forward pass."})
    shard_rows: int = field(default=65536, metadata={"help": "Pairs per embedding shard."})
    fine_clusters: int = field(default=1024, metadata={"help": "m, the fine clusters (paper: 1024)."})
    experts: int = field(default=4, metadata={"help": "n, the coarse clusters: one expert each."})
    one_step: bool = field(default=False, metadata={"help": "Ablation: balanced k-means straight into n."})
    random: bool = field(default=False, metadata={"help": "Ablation: a random split into n."})
    fit_sample: int = field(default=1_000_000, metadata={"help": "Pairs sampled to fit the centres."})
    iterations: int = field(default=20, metadata={"help": "Lloyd iterations of each k-means."})
    candidates: int = field(default=8, metadata={"help": "Nearest centres each point may be seated at."})
    seed: int = field(default=0, metadata={"help": "Seeds the caption choice, the fit sample and the k-means."})
    clusters: str | None = field(default=None, metadata={"help": "Label with this clusters.safetensors, no fit."})

    def __post_init__(self):
        super().__post_init__()
        if self.one_step and self.random:
            raise InputError("--one-step and --random are two different ablations: give one of them.")
        if self.experts < 1 or self.fine_clusters < self.experts:
            raise InputError(f"need 1 <= --experts <= --fine-clusters, got {self.experts} and {self.fine_clusters}")
        for flag in ("batch_size", "shard_rows", "fit_sample", "iterations", "candidates", "max_length"):
            value = getattr(self, flag)
            if value is not None and value < 1:  # max_length may be None: the encoder's own limit
                raise InputError(f"--{flag.replace('_', '-')} must be positive, got {value}")

    @property
    def method(self) -> str:
        return "random" if self.random else "one-step" if self.one_step else "two-level"


def cluster(args: ClusterArguments, accelerator: Accelerator) -> dict | None:
    """Run the clustering; returns its report on the main process (None on the others).

    Each process embeds its own shards; the main process then fits (or reuses a fit) and labels every pair. A folder
    that already holds a finished run with these settings is left as it is.
    """
    output = check_output_dir(args.output)
    # Every check that does not need the captions' embeddings comes before them.
    given = load_given_clusters(args.clusters)
    dataset = load_pairs(args.dataset, args.split)
    check_dataset(args, dataset, fitting=given is None)
    with naming_failures("--encoder", args.encoder):
        encoder = CaptionEncoder(args.encoder, args.pooling, accelerator.device, args.max_length)
    if given is not None:
        check_dimension(given, args, encoder)
    shards = EmbeddingShards.create(output / "embeddings", embedding_meta(args, dataset, encoder), write=False)
    settings = fit_settings(args, shards)
    if (report := finished_report(output, settings)) is not None:
        logger.info(f"{output / CLUSTERS_JSON} is up to date: nothing to do")
        return report if accelerator.is_main_process else None
    if accelerator.is_main_process:
        # Before anything in the folder changes: without its report, no reader takes it for a finished run.
        (output / CLUSTERS_JSON).unlink(missing_ok=True)
        shards.write_meta()
    accelerator.wait_for_everyone()

    start = time.perf_counter()
    embed_corpus(
        dataset,
        args.caption_column,
        encoder,
        shards,
        accelerator.process_index,
        accelerator.num_processes,
        args.batch_size,
        args.seed,
    )
    embed_seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()  # every shard is on disk
    if not accelerator.is_main_process:
        return None  # the fit and the assignment run on the main process alone: no barrier to time out on
    del encoder
    check_some_caption(shards, args.caption_column)

    start = time.perf_counter()
    clusters = fit_or_load(args, shards, output / CLUSTERS_FILE, settings, given)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sizes = assign_and_save(args, dataset, shards, clusters, output)
    seconds = {
        "embedding": round(embed_seconds, 2),
        "fit": round(fit_seconds, 2),
        "assignment": round(time.perf_counter() - start, 2),
    }
    report = make_report(
        args, clusters, shards, sizes, settings, num_processes=accelerator.num_processes, seconds=seconds
    )
    write_json(output / CLUSTERS_JSON, report)  # last: from now on the folder is a finished run
    logger.info(
        f"{report['num_pairs']} pairs, {report['num_missing_captions']} without a caption; fine imbalance "
        f"{report['imbalance']:.3f} (fit {report['fit_imbalance']}); expert sizes {report['coarse_sizes']}; "
        f"saved to {output}"
    )
    return report


def load_given_clusters(path: str | None) -> Clusters | None:
    if path is None:
        return None
    try:
        return load_clusters(path)[0]
    except InputError as error:
        raise InputError(f"--clusters: {error}") from error


def check_dataset(args: ClusterArguments, dataset, fitting: bool) -> None:
    """Refuse, before any embedding, a caption column the dataset lacks and a fit it has too few pairs for."""
    if args.caption_column not in dataset.column_names:
        raise InputError(
            f"The dataset has no caption column {args.caption_column!r} (--caption-column); "
            f"its columns: {dataset.column_names}."
        )
    needed = num_fitted_clusters(args.method, args.fine_clusters, args.experts)
    sample = min(args.fit_sample, len(dataset))
    if fitting and sample < needed:
        raise InputError(
            f"A fit into {needed} clusters needs at least {needed} captioned pairs, but it samples {sample}: "
            f"--dataset has {len(dataset)} pairs and --fit-sample is {args.fit_sample}. "
            "Lower --fine-clusters (--experts with --one-step) or use more pairs."
        )


def check_dimension(clusters: Clusters, args: ClusterArguments, encoder: CaptionEncoder) -> None:
    if clusters.embed_dim != encoder.embed_dim:
        raise InputError(
            f"--clusters {args.clusters} has centroids of dimension {clusters.embed_dim}, but --encoder "
            f"{args.encoder} embeds to {encoder.embed_dim}: use the encoder those centroids were fitted with."
        )


def check_some_caption(shards: EmbeddingShards, caption_column: str) -> None:
    """Refuse a corpus without a single caption. Only the embedding pass reads every caption, so this runs after it
    (a pass that embeds nothing is quick); a pair without a caption is an all-zero row, and the first shard holding
    a caption ends the search."""
    if not any(shards.read(shard).any() for shard in range(shards.num_shards)):
        raise InputError(
            f"None of the {shards.num_rows} pairs has a caption in --caption-column {caption_column!r} "
            "(None, empty or blank strings and empty lists count as missing)."
        )


def embedding_meta(args: ClusterArguments, dataset, encoder: CaptionEncoder) -> dict:
    """What the embeddings are of: a folder of embeddings made otherwise is refused rather than mixed. The caption
    seed and shard size also say which caption of a list was embedded (`embedding.shard_captions`)."""
    return {
        "encoder": args.encoder,
        "pooling": encoder.pooling,
        "embed_dim": encoder.embed_dim,
        "max_length": encoder.max_length,
        "dataset": args.dataset,
        "split": args.split,
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
        "num_rows": len(dataset),
        "caption_column": args.caption_column,
        "caption_seed": args.seed,
        "shard_rows": args.shard_rows,
    }


def fit_settings(args: ClusterArguments, shards: EmbeddingShards) -> dict:
    """Everything a run's clusters and labels depend on: a stored fit or a finished run with the same is reused."""
    return {
        "method": args.method,
        "fine_clusters": args.fine_clusters,
        "experts": args.experts,
        "fit_sample": args.fit_sample,
        "iterations": args.iterations,
        "candidates": args.candidates,
        "seed": args.seed,
        "embeddings": shards.meta,
        "clusters": args.clusters,
    }


def finished_report(output: Path, settings: dict) -> dict | None:
    """The report of the finished run in `output` if it was made with `settings`, else None: the same test of
    "finished" (`read_finished_run`) that every reader of a clustering output uses."""
    try:
        _, report = read_finished_run(output)
    except InputError:
        return None
    return report if report.get("settings") == settings else None


def fit_or_load(args, shards: EmbeddingShards, path: Path, settings: dict, given: Clusters | None) -> Clusters:
    """The clusters: --clusters, an earlier fit in `path` with the same settings, or a fit on a sample now.

    They are saved to `path` with the run's settings, so the output holds the centres its labels come from.
    """
    if given is None and path.is_file():
        clusters, stored = load_clusters(path)
        if stored == settings:
            logger.info(f"reusing the fit in {path}")
            return clusters
    clusters = given if given is not None else fit_on_sample(args, shards)
    save_clusters(path, clusters, settings)
    return clusters


def fit_on_sample(args: ClusterArguments, shards: EmbeddingShards) -> Clusters:
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(shards.num_rows, size=min(args.fit_sample, shards.num_rows), replace=False))
    sample = shards.gather(rows)
    sample = sample[np.any(sample != 0, axis=1)]  # pairs without a caption have zero rows
    return fit_clusters(
        sample, args.fine_clusters, args.experts, args.method, args.iterations, args.seed, args.candidates
    )


def assign_and_save(args, dataset, shards: EmbeddingShards, clusters: Clusters, output: Path) -> dict:
    """Label every pair (streamed from the shards) and save the labelled corpus; returns the cluster sizes.

    The fine ids go to a memory-mapped file as they are found, so memory does not grow with the corpus."""
    fine_file = output / ".fine_ids.npy"
    fine = np.lib.format.open_memmap(fine_file, mode="w+", dtype=np.int32, shape=(shards.num_rows,))
    fine_sizes, missing = np.zeros(clusters.num_fine_clusters, dtype=np.int64), 0
    start = time.perf_counter()
    with tqdm(total=shards.num_rows, unit="pairs", desc="assigning", dynamic_ncols=True) as bar:
        for shard, ids in enumerate(assign_shards(shards, clusters, args.seed)):
            rows = shards.rows_of(shard)
            fine[rows.start : rows.stop] = ids
            fine_sizes += np.bincount(ids[ids >= 0], minlength=clusters.num_fine_clusters)
            missing += int((ids < 0).sum())
            bar.update(len(rows))
    logger.info(f"assigned {shards.num_rows} pairs in {time.perf_counter() - start:.1f} s")
    save_labelled(args, dataset, fine, clusters.fine_to_coarse.astype(np.int32), output)
    fine_file.unlink()  # Linux keeps mapped files readable until they are closed
    coarse_sizes = np.bincount(clusters.fine_to_coarse, weights=fine_sizes, minlength=clusters.num_experts)
    return {
        "fine_sizes": fine_sizes.tolist(),
        "coarse_sizes": coarse_sizes.astype(np.int64).tolist(),
        "num_missing_captions": missing,
    }


def save_labelled(args, dataset, fine: np.ndarray, fine_to_coarse: np.ndarray, output: Path) -> None:
    """`output/dataset`: the corpus plus `fine_id` and `coarse_id`, replacing the one there as a whole."""

    def add_ids(_captions, indices):
        ids = fine[indices[0] : indices[-1] + 1]  # map hands out contiguous batches
        return {"fine_id": ids, "coarse_id": np.where(ids >= 0, fine_to_coarse[np.maximum(ids, 0)], NO_CLUSTER)}

    if present := [c for c in ID_COLUMNS if c in dataset.column_names]:
        logger.warning(f"replacing the dataset's existing {present} columns")
        dataset = dataset.remove_columns(present)
    cache = output / ".labelled.arrow"
    labelled = dataset.map(
        add_ids,
        input_columns=[args.caption_column],  # only the captions are read: images stay encoded
        with_indices=True,
        batched=True,
        batch_size=args.shard_rows,
        cache_file_name=str(cache),
        load_from_cache_file=False,  # one left by a crashed run holds another run's labels
        new_fingerprint=f"mode-clusters-{os.urandom(8).hex()}",
        desc="writing fine_id / coarse_id",
    )
    with atomic_directory(output / "dataset") as scratch:
        labelled.save_to_disk(str(scratch))
    cache.unlink()


def make_report(args, clusters: Clusters, shards: EmbeddingShards, sizes: dict, settings: dict, **extra) -> dict:
    return {
        "encoder": args.encoder,
        "pooling": shards.meta["pooling"],
        "embed_dim": shards.embed_dim,
        "num_fine_clusters": clusters.num_fine_clusters,
        "num_experts": clusters.num_experts,
        "method": clusters.method,
        "balance": "none: a random split" if clusters.method == "random" else BALANCE,
        "assignment": "random" if clusters.method == "random" else "nearest fine centre",
        "fit_sample": int(clusters.fit_sizes.sum()),  # captioned pairs the centres were fitted on
        "seed": args.seed,
        "iterations": args.iterations,
        "candidates": args.candidates,
        **sizes,
        "imbalance": imbalance(sizes["fine_sizes"]),
        "fit_imbalance": imbalance(clusters.fit_sizes) if clusters.fit_sizes.any() else None,
        "caption_column": args.caption_column,
        "dataset": args.dataset,
        "split": args.split,
        "num_pairs": shards.num_rows,
        "clusters_from": args.clusters,
        "faiss_gpus": faiss_gpus(),
        **extra,
        "settings": settings,
    }
