"""A clustering run (train/cluster.py): embed a corpus' captions, fit MODE's clusters, label every pair, report.

The k-means algorithms live in `kmeans`; this module is the run around them: its flags, the checks made before
any work, what an earlier run in the same folder lets it reuse, and the order of its writes. A folder is a finished
run or is refused (`outputs.read_finished_run`): clusters.json is written last, and a run whose settings differ
from the folder's removes it before changing anything else. Its command line, the run then its push: `command_line`.

The corpus is read one of two ways (`clustered_corpus`). In memory (`InMemoryCorpus`): a `datasets` Dataset, embedded
in shards of --shard-rows pairs, labelled in the labels table (`labels_table`) and in a labelled copy `dataset/`.
Streamed (`StreamedCorpus`, --streaming): the data files of a folder or Hub id (`data.data_files`), each read for its
captions only and embedded into its own shard, labelled in the labels table alone: no byte of an image is read into
memory or written, whatever the corpus' size.
"""

import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from ..core.checks import check_output_dir, naming_failures
from ..core.errors import InputError
from ..core.files import read_json, write_json, writing_lock
from ..core.mode_folder import stored_centroids
from ..core.resume_guard import check_same_settings
from ..core.status import ProgressBar
from ..hub.flags import HubArguments
from .clustered_corpus import ClusteredCorpus, InMemoryCorpus, StreamedCorpus
from .embedding import POOLINGS, CaptionEncoder, EmbeddingShards
from .kmeans import (
    BALANCE,
    NO_CLUSTER,
    DistanceHistogram,
    KnownCentres,
    assign_shards,
    faiss_gpus,
    fit_clusters,
    imbalance,
    num_fitted_clusters,
)
from .labels_table import LABELS_DIR, clear_labels, finish_labels, write_labels
from .outputs import CLUSTERS_FILE, CLUSTERS_JSON, Clusters, load_clusters, read_finished_run, save_clusters

logger = logging.getLogger(__name__)
EMBEDDINGS_DIR = "embeddings"
EMBEDDING_DTYPES = ("float32", "float16")


@dataclass
class ClusterArguments(HubArguments):
    """Flags of `train/cluster.py`; `--push_to_hub` sends the labelled pairs (with --streaming, the labels table) and
    centroids to a dataset repo."""

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
    shard_rows: int = field(default=65536, metadata={"help": "Pairs per embedding shard (not with --streaming)."})
    fine_clusters: int = field(default=1024, metadata={"help": "m, the fine clusters (paper: 1024)."})
    experts: int = field(default=4, metadata={"help": "n, the coarse clusters: one expert each."})
    one_step: bool = field(default=False, metadata={"help": "Ablation: balanced k-means straight into n."})
    random: bool = field(default=False, metadata={"help": "Ablation: a random split into n."})
    fit_sample: int = field(default=1_000_000, metadata={"help": "Pairs sampled to fit the centres."})
    iterations: int = field(default=20, metadata={"help": "Lloyd iterations of each k-means."})
    candidates: int = field(default=8, metadata={"help": "Nearest centres each point may be seated at."})
    seed: int = field(default=0, metadata={"help": "Seeds the caption choice, the fit sample and the k-means."})
    clusters: str | None = field(default=None, metadata={"help": "Label with this clusters.safetensors, no fit."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read --dataset's data files (parquet or webdataset .tar, a folder or Hub id) one at a time, "
            "captions only, each process its own; write the labels table and no labelled copy."
        },
    )
    embeddings_dtype: str = field(
        default="float32",
        metadata={"help": "How embeddings are stored: float16 halves them.", "choices": EMBEDDING_DTYPES},
    )
    keep_embeddings: bool = field(
        default=False,
        metadata={"help": "With --streaming, keep embeddings/ once the labels are written (default: delete them)."},
    )
    beside: str | None = field(
        default=None,
        metadata={
            "help": "A MODE folder routed with its clustering's centres (train/grow.py's first step): a pair as close "
            "to one of its fine centres as its own pairs were (--beside-quantile of their distances) fits it and gets "
            "no new cluster (-1, counted); the others are clustered. --encoder must be the MODE's router."
        },
    )
    beside_quantile: str = field(
        default="0.99", metadata={"help": "Which quantile of the MODE's own pairs' distances: 0.5, 0.9 or 0.99."}
    )

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
        if self.seed < 0:  # numpy's generators refuse it, after the embeddings' folder is made
            raise InputError(f"--seed must be at least 0, got {self.seed}")

    @property
    def method(self) -> str:
        return "random" if self.random else "one-step" if self.one_step else "two-level"

    @property
    def keeps_embeddings(self) -> bool:
        """A streamed run, at web scale, deletes its embeddings (many times the labels' size) once the labels are
        written, unless told to keep them. An in-memory run, of a corpus that fits on disk twice, keeps them as it
        always did: re-clustering the same folder with other settings (an ablation) reuses them."""
        return self.keep_embeddings or not self.streaming


def cluster(args: ClusterArguments, accelerator: Accelerator) -> dict | None:
    """Run the clustering; returns its report on the main process (None on the others).

    Each process embeds its own shards; the main process then fits (or reuses a fit) and labels every pair. A folder
    that already holds a finished run with these settings is left as it is.
    """
    output = check_output_dir(args.output, dataset=args.dataset, kind="a clustering run")
    with writing_lock(output) if accelerator.is_main_process else nullcontext():  # one run at a time writes there
        return run_clustering(args, accelerator, output)


def run_clustering(args: ClusterArguments, accelerator: Accelerator, output: Path) -> dict | None:
    # Every check that does not need the captions' embeddings comes before them.
    given = load_given_clusters(args.clusters)
    known = known_centres(args.beside, args.beside_quantile) if args.beside else None
    corpus = open_corpus(args)
    if corpus.num_rows is not None:  # a streamed corpus is counted while it is embedded: checked then
        check_fit_sample(args, corpus.num_rows, fitting=given is None)
    with naming_failures("--encoder", args.encoder):
        encoder = CaptionEncoder(args.encoder, args.pooling, accelerator.device, args.max_length)
    if given is not None:
        check_dimension(given, args, encoder)
    if known is not None and known.centroids.shape[1] != encoder.embed_dim:
        raise InputError(
            f"--beside {args.beside}'s fine centres have dimension {known.centroids.shape[1]}, but --encoder "
            f"{args.encoder} embeds to {encoder.embed_dim}: give the MODE's router as --encoder."
        )
    shards = EmbeddingShards.create(output / EMBEDDINGS_DIR, embedding_meta(args, corpus, encoder), write=False)
    settings = fit_settings(args, shards)
    if (report := finished_report(output, settings)) is not None:
        logger.info(f"{output / CLUSTERS_JSON} is up to date: nothing to do")
        if not accelerator.is_main_process:
            return None
        drop_embeddings(args, shards)  # left by a run stopped right after its report
        return report
    if accelerator.is_main_process:
        # Before anything in the folder changes: without its report, no reader takes it for a finished run.
        (output / CLUSTERS_JSON).unlink(missing_ok=True)
        clear_labels(output / LABELS_DIR)
        shards.write_meta()
    accelerator.wait_for_everyone()

    start = time.perf_counter()
    corpus.embed(encoder, shards, accelerator.process_index, accelerator.num_processes, args.batch_size)
    embed_seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()  # every shard is on disk
    if not accelerator.is_main_process:
        return None  # the fit and the assignment run on the main process alone: no barrier to time out on
    del encoder
    check_some_caption(shards, args.caption_column)
    check_fit_sample(args, shards.num_rows, fitting=given is None)

    start = time.perf_counter()
    clusters = fit_or_load(args, shards, output / CLUSTERS_FILE, settings, given, known)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sizes = assign_and_save(args, corpus, shards, clusters, settings, output, known)
    seconds = {
        "embedding": round(embed_seconds, 2),
        "fit": round(fit_seconds, 2),
        "assignment": round(time.perf_counter() - start, 2),
    }
    report = make_report(
        args, clusters, shards, sizes, settings, num_processes=accelerator.num_processes, seconds=seconds
    )
    write_json(output / CLUSTERS_JSON, report)  # last: from now on the folder is a finished run
    drop_embeddings(args, shards)
    logger.info(
        f"{report['num_pairs']} pairs, {report['num_missing_captions']} without a caption; fine imbalance "
        f"{report['imbalance']:.3f} (fit {report['fit_imbalance']}); expert sizes {report['coarse_sizes']}; "
        f"saved to {output}"
    )
    return report


def open_corpus(args: ClusterArguments) -> ClusteredCorpus:
    """The corpus to cluster, streamed (--streaming) or in memory, checked for its caption column."""
    if args.streaming:
        return StreamedCorpus.load(args.dataset, args.split, args.caption_column, args.seed)
    return InMemoryCorpus.load(args.dataset, args.split, args.caption_column, args.shard_rows, args.seed)


def load_given_clusters(path: str | None) -> Clusters | None:
    if path is None:
        return None
    try:
        return load_clusters(path)[0]
    except InputError as error:
        raise InputError(f"--clusters: {error}") from error


def check_fit_sample(args: ClusterArguments, num_rows: int, fitting: bool) -> None:
    """Refuse a fit the corpus has too few pairs for (before any embedding when its size is known in advance)."""
    needed = num_fitted_clusters(args.method, args.fine_clusters, args.experts)
    sample = min(args.fit_sample, num_rows)
    if fitting and sample < needed:
        raise InputError(
            f"A fit into {needed} clusters needs at least {needed} captioned pairs, but it samples {sample}: "
            f"--dataset has {num_rows} pairs and --fit-sample is {args.fit_sample}. "
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


def embedding_meta(args: ClusterArguments, corpus: ClusteredCorpus, encoder: CaptionEncoder) -> dict:
    """What the embeddings are of: a folder of embeddings made otherwise is refused rather than mixed. The caption
    seed and the shards also say which caption of a list was embedded (`embedding.choose_shard_captions`)."""
    return {
        "encoder": args.encoder,
        "pooling": encoder.pooling,
        "embed_dim": encoder.embed_dim,
        "max_length": encoder.max_length,
        "dataset": args.dataset,
        "split": args.split,
        "caption_column": args.caption_column,
        "caption_seed": args.seed,
        "dtype": args.embeddings_dtype,
        **corpus.layout(),
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
        **({"beside": {"mode": args.beside, "quantile": args.beside_quantile}} if args.beside else {}),
    }


def known_centres(mode: str, quantile: str) -> KnownCentres:
    """The fine centres of the MODE in the folder `mode` and the squared distance within which `quantile` of its own
    pairs lay (its config's `fine_distance_quantiles`: a MODE routed with its clustering's centres as fitted)."""
    folder = Path(mode)
    with naming_failures("--beside", mode):
        config = read_json(folder / "config.json")
        centroids = stored_centroids(folder, "--beside")
        if centroids is None:
            raise InputError(f"--beside {mode} holds no fine_centroids: it is not a MODE's folder.")
    radii = config.get("fine_distance_quantiles") or {}
    if quantile not in radii:
        raise InputError(
            f"--beside {mode} records no distance quantile {quantile} of its own pairs (it has "
            f"{sorted(radii) or 'none'}): a MODE routed with its clustering's centres as fitted records them "
            "(train/assemble.py --router clustering-encoder, from a clustering of this version)."
        )
    return KnownCentres(centroids, float(radii[quantile]))


def finished_report(output: Path, settings: dict) -> dict | None:
    """The report of the finished run in `output` if it was made with `settings`, else None (the same test of
    "finished", `read_finished_run`, that every reader of a clustering output uses). Another fit of the same
    embeddings may replace it (other k, method, ...); a run of other embeddings may not (another encoder, corpus, or a
    data file changed since, named): experts may have trained on its labels."""
    try:
        _, report = read_finished_run(output)
    except InputError:
        return None
    check_same_settings(
        report.get("settings", {}).get("embeddings", {}), settings["embeddings"],
        f"--output {str(output)!r} holds a finished clustering of embeddings made",
        "give another --output, or the corpus, encoder and flags it was made from.",
    )  # fmt: skip
    return report if report["settings"] == settings else None


def fit_or_load(
    args, shards: EmbeddingShards, path: Path, settings: dict, given: Clusters | None, known: KnownCentres | None
) -> Clusters:
    """The clusters: --clusters, an earlier fit in `path` with the same settings, or a fit on a sample now.

    They are saved to `path` with the run's settings, so the output holds the centres its labels come from.
    """
    if given is None and path.is_file():
        clusters, stored = load_clusters(path)
        if stored == settings:
            logger.info(f"reusing the fit in {path}")
            return clusters
    clusters = given if given is not None else fit_on_sample(args, shards, known)
    save_clusters(path, clusters, settings)
    return clusters


def fit_on_sample(args: ClusterArguments, shards: EmbeddingShards, known: KnownCentres | None = None) -> Clusters:
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(shards.num_rows, size=min(args.fit_sample, shards.num_rows), replace=False))
    sample = shards.gather(rows)
    sample = sample[np.any(sample != 0, axis=1)]  # pairs without a caption have zero rows
    if known is not None:  # the pairs that fit the MODE's clusters are not this clustering's to fit
        sample = sample[~known.fits(sample)]
        if len(sample) < args.fine_clusters:
            raise InputError(
                f"only {len(sample)} of the sampled pairs lie farther from --beside {args.beside}'s clusters than "
                f"its own pairs did (quantile {args.beside_quantile}): too few for {args.fine_clusters} new fine "
                "clusters. The new pairs fit the MODE as it is; give fewer --fine-clusters to split the rest."
            )
    return fit_clusters(
        sample, args.fine_clusters, args.experts, args.method, args.iterations, args.seed, args.candidates
    )


def assign_and_save(
    args,
    corpus: ClusteredCorpus,
    shards: EmbeddingShards,
    clusters: Clusters,
    settings: dict,
    output: Path,
    known: KnownCentres | None = None,
) -> dict:
    """Label every pair (streamed from the shards, a part of the labels table per shard), then write the labelled
    copy if the corpus makes one; returns the cluster sizes and where the labels are."""
    labels = output / LABELS_DIR
    fine_to_coarse = clusters.fine_to_coarse.astype(np.int32)
    fine_sizes, missing, distances = np.zeros(clusters.num_fine_clusters, dtype=np.int64), 0, DistanceHistogram()
    start = time.perf_counter()
    with ProgressBar(total=shards.num_rows, unit="pairs", desc="assigning", dynamic_ncols=True) as bar:
        for shard, fine in enumerate(assign_shards(shards, clusters, args.seed, distances=distances, known=known)):
            coarse = np.where(fine >= 0, fine_to_coarse[np.maximum(fine, 0)], NO_CLUSTER)
            keys = corpus.embedded_keys(shards, shard)
            write_labels(labels, shard, corpus.source(shard), keys, shards.rows_of(shard), fine, coarse)
            fine_sizes += np.bincount(fine[fine >= 0], minlength=clusters.num_fine_clusters)
            missing += int((fine < 0).sum())  # with --beside, the pairs that fit the MODE too: taken out below
            bar.update(len(fine))
    logger.info(f"assigned {shards.num_rows} pairs in {time.perf_counter() - start:.1f} s")
    finish_labels(labels, labels_meta(args, corpus, shards, clusters, settings))
    labelled_copy = corpus.save_labelled_copy(labels, output)
    coarse_sizes = np.bincount(clusters.fine_to_coarse, weights=fine_sizes, minlength=clusters.num_experts)
    return {
        "fine_sizes": fine_sizes.tolist(),
        "coarse_sizes": coarse_sizes.astype(np.int64).tolist(),
        "num_missing_captions": missing - (known.fitting if known else 0),
        **({"num_fitting_pairs": known.fitting} if known else {}),  # --beside: they fit the MODE's clusters
        # each pair's squared distance to its fine centre: how far a new pair may lie and still fit (growing)
        "fine_distance_quantiles": distances.quantiles(),
        "labels": LABELS_DIR,
        "labelled_copy": labelled_copy,
    }


def labels_meta(args, corpus: ClusteredCorpus, shards: EmbeddingShards, clusters: Clusters, settings: dict) -> dict:
    """labels.json: which corpus the table labels, so that it is never joined with another (`labels` module)."""
    return {
        "dataset": args.dataset,
        "split": args.split,
        "caption_column": args.caption_column,
        "num_rows": shards.num_rows,
        "data_files": corpus.data_files,  # named relative to the corpus root, which is recorded but never read
        "corpus_root": corpus.root,
        "num_experts": clusters.num_experts,
        "num_fine_clusters": clusters.num_fine_clusters,
        "clusters_settings": settings,
    }


def drop_embeddings(args: ClusterArguments, shards: EmbeddingShards) -> None:
    """Delete the embeddings unless they are to be kept: the labels, fit and report no longer need them."""
    if not args.keeps_embeddings and shards.folder.exists():
        shutil.rmtree(shards.folder)
        logger.info(f"deleted {shards.folder} (--keep-embeddings keeps it)")


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
        "streaming": args.streaming,
        "num_data_files": len(shards.meta.get("data_files", [])),
        "embeddings": EMBEDDINGS_DIR if args.keeps_embeddings else None,
        "clusters_from": args.clusters,
        "faiss_gpus": faiss_gpus(),
        **extra,
        "settings": settings,
    }
