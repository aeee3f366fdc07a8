"""Cluster an image-caption corpus into MODE's data experts: caption embeddings, then two-level balanced k-means.

    accelerate launch train/cluster.py --dataset PATH_OR_HUB_ID --caption-column caption \\
        --encoder PATH_OR_HUB_ID --fine-clusters 1024 --experts 4 --output runs/clusters

Writes, in --output: `dataset/` (the corpus plus int32 `fine_id` and `coarse_id`, -1 for pairs without a caption),
`clusters.safetensors` (`fine_centroids`, `coarse_centroids`, `fine_to_coarse`), `clusters.json` (the run's metadata,
written last) and `embeddings/` (one memory-mappable shard per --shard-rows pairs). Each process embeds its own
shards; the main process fits and assigns. Re-running the same command resumes: finished shards and a fit with the
same settings are reused.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from accelerate import Accelerator
from huggingface_hub import HfApi
from tqdm.auto import tqdm

from hub_cards.push import PushError, push_clustered_dataset
from modeling_mode.clustering import (
    BALANCE,
    NO_CLUSTER,
    assign_shards,
    fit_clusters,
    imbalance,
    load_clusters,
    save_clusters,
)
from modeling_mode.data import load_pairs
from modeling_mode.embedding import CaptionEncoder, EmbeddingShards, embed_corpus
from modeling_mode.files import write_json

logger = logging.getLogger("cluster")
ID_COLUMNS = ("fine_id", "coarse_id")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="save_to_disk folder, data folder or Hub dataset id")
    parser.add_argument("--split", default="train", help="split to cluster (default: train)")
    parser.add_argument("--caption-column", default="caption", help="a string or list-of-strings column")
    parser.add_argument("--encoder", required=True, help="CLIP checkpoint or AutoModel sentence encoder, path or id")
    parser.add_argument("--pooling", choices=["projection", "mean", "cls", "pooler"], help="default: by encoder")
    parser.add_argument("--max-length", type=int, help="token limit (default: the encoder's)")
    parser.add_argument("--batch-size", type=int, default=128, help="captions per encoder forward pass")
    parser.add_argument("--shard-rows", type=int, default=65536, help="pairs per embedding shard")
    parser.add_argument("--fine-clusters", type=int, default=1024, help="m, the fine clusters (paper: 1024)")
    parser.add_argument("--experts", type=int, default=4, help="n, the coarse clusters: one expert each")
    method = parser.add_mutually_exclusive_group()
    method.add_argument("--one-step", action="store_true", help="ablation: balanced k-means straight into n")
    method.add_argument("--random", action="store_true", help="ablation: a random split into n")
    parser.add_argument("--fit-sample", type=int, default=1_000_000, help="pairs sampled to fit the centres")
    parser.add_argument("--iterations", type=int, default=20, help="Lloyd iterations of each k-means")
    parser.add_argument("--candidates", type=int, default=8, help="nearest centres each point may be seated at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clusters", help="assign with this clusters.safetensors instead of fitting")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then push the dataset and centroids to the Hub")
    parser.add_argument("--private", action="store_true", help="make the --push-to-hub repo private")
    args = parser.parse_args(argv)
    args.method = "random" if args.random else "one-step" if args.one_step else "two-level"
    if args.experts < 1 or args.fine_clusters < args.experts:
        parser.error(f"need 1 <= --experts <= --fine-clusters, got {args.experts} and {args.fine_clusters}")
    for flag in ("batch_size", "shard_rows", "fit_sample", "iterations", "candidates"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    return args


def fit_settings(args, shards: EmbeddingShards) -> dict:
    """Everything a fit depends on: a stored fit with the same settings is reused."""
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


def fit_or_load(args, shards: EmbeddingShards, path: Path, settings: dict):
    """The clusters: from --clusters, from an earlier run with the same settings, or fitted now on a sample."""
    if args.clusters:
        clusters, _ = load_clusters(args.clusters)
        if clusters.embed_dim != shards.embed_dim:
            raise ValueError(
                f"--clusters {args.clusters} has centroids of dimension {clusters.embed_dim}, but --encoder "
                f"{args.encoder} embeds to {shards.embed_dim}: use the encoder those centroids were fitted with."
            )
        return clusters
    if path.exists():
        clusters, stored = load_clusters(path)
        if stored == settings:
            logger.info(f"reusing the fit in {path}")
            return clusters
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(shards.num_rows, size=min(args.fit_sample, shards.num_rows), replace=False))
    sample = shards.gather(rows)
    sample = sample[np.any(sample != 0, axis=1)]  # pairs without a caption have zero rows
    clusters = fit_clusters(
        sample, args.fine_clusters, args.experts, args.method, args.iterations, args.seed, args.candidates
    )
    save_clusters(path, clusters, settings)
    return clusters


def assign_and_save(args, dataset, shards: EmbeddingShards, clusters, output: Path) -> dict:
    """Label every pair (streamed from the shards) and save the labelled corpus; returns the cluster sizes."""
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
    fine_to_coarse = clusters.fine_to_coarse.astype(np.int32)

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
        batch_size=shards.shard_rows,
        cache_file_name=str(cache),
        new_fingerprint=f"mode-clusters-{os.urandom(8).hex()}",
        desc="writing fine_id / coarse_id",
    )
    partial, final = output / ".dataset.partial", output / "dataset"
    shutil.rmtree(partial, ignore_errors=True)
    labelled.save_to_disk(str(partial))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    coarse_sizes = np.bincount(fine_to_coarse, weights=fine_sizes, minlength=clusters.num_experts)
    sizes = {
        "fine_sizes": fine_sizes.tolist(),
        "coarse_sizes": coarse_sizes.astype(np.int64).tolist(),
        "num_missing_captions": missing,
    }
    cache.unlink(missing_ok=True)  # Linux keeps mapped files readable until they are closed
    fine_file.unlink()
    return sizes


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    output = Path(args.output)
    report_path = output / "clusters.json"

    dataset = load_pairs(args.dataset, args.split)
    if args.caption_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no caption column {args.caption_column!r} (--caption-column); "
            f"its columns: {dataset.column_names}."
        )
    encoder = CaptionEncoder(args.encoder, args.pooling, accelerator.device, args.max_length)
    meta = {
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
    shards = EmbeddingShards.create(output / "embeddings", meta, write=accelerator.is_main_process)
    settings = fit_settings(args, shards)
    if report_path.exists() and json.loads(report_path.read_text()).get("settings") == settings:
        if accelerator.is_main_process:
            logger.info(f"{report_path} is up to date: nothing to do")
        return json.loads(report_path.read_text())

    accelerator.wait_for_everyone()  # meta.json is written
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

    start = time.perf_counter()
    clusters = fit_or_load(args, shards, output / "clusters.safetensors", settings)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sizes = assign_and_save(args, dataset, shards, clusters, output)
    report = {
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
        "faiss_gpus": faiss.get_num_gpus(),
        "num_processes": accelerator.num_processes,
        "seconds": {
            "embedding": round(embed_seconds, 2),
            "fit": round(fit_seconds, 2),
            "assignment": round(time.perf_counter() - start, 2),
        },
        "settings": settings,
    }
    write_json(report_path, report)  # written last: its presence means the run finished
    if args.push_to_hub:  # the run is complete on disk first: a failed push loses nothing
        commit = push_clustered_dataset(HfApi(), output, args.push_to_hub, private=args.private)
        logger.info(f"pushed to {commit.commit_url}")
    logger.info(
        f"{report['num_pairs']} pairs, {report['num_missing_captions']} without a caption; fine imbalance "
        f"{report['imbalance']:.3f} (fit {report['fit_imbalance']}); expert sizes {report['coarse_sizes']}; "
        f"saved to {output}"
    )
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, PushError) as error:
        sys.exit(f"error: {error}")
