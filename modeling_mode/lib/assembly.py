"""Assembling trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

When the clustering embedded captions with another encoder than the router (e.g. SimCSE or MiniLM), each fine
centroid is re-expressed in the router's space as the mean router embedding of its cluster's captions: the captions
the clustering embedded, read shard by shard as it read them, from its labelled copy `dataset/` (in memory) or from
the corpus' data files joined with its labels table `labels/` (`--streaming`).
"""

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from ..configuration_mode_clip import ModeCLIPConfig
from ..modeling_mode_clip import ModeCLIPModel, _architecture
from .clustering import read_finished_run
from .data import cluster_ids, load_pairs
from .embedding import CaptionEncoder, EmbeddingShards, data_file_captions, shard_captions
from .errors import InputError, check_output_dir, naming_failures
from .files import atomic_directory, read_json, write_json
from .hub import HubArguments
from .labels import LABELS_DIR, check_labels_match, read_part, read_run_labels
from .training import TRAINING_ARGS, is_finished

logger = logging.getLogger(__name__)

ASSEMBLY = "assembly.json"
ROUTER_SETTINGS = ("routing", "router_lambda", "router_top_k", "router_temperature")


@dataclass
class AssembleArguments(HubArguments):
    """Flags of `train/assemble.py`; `--push_to_hub` pushes the model with its card (hub_cards/push.py)."""

    experts: list[str] = field(metadata={"help": "Expert run directories (train/expert.py outputs), any order."})
    clusters: str = field(
        metadata={"help": "Clustering output: clusters.safetensors, clusters.json, dataset/ or labels/ (--streaming)."}
    )
    router_text_model: str = field(metadata={"help": "The seed CLIP: its text tower routes tasks; its processor."})
    output: str = field(metadata={"help": "Directory of the assembled ModeCLIPModel.", "aliases": ["--output_dir"]})
    recompute_centroids: bool = field(
        default=False,
        metadata={"help": "Re-express the fine centroids in the router's space even if the clustering used it."},
    )
    routing: str = field(default="paper", metadata={"help": "paper, released or uniform."})
    router_lambda: float = field(default=0.2, metadata={"help": "Kernel width of the paper's routing."})
    router_top_k: int | None = field(default=None, metadata={"help": "Keep only the k highest-weighted experts."})
    router_temperature: float = field(default=8.0, metadata={"help": "Softmax temperature of the released routing."})

    @property
    def router_settings(self) -> dict:
        return {name: getattr(self, name) for name in ROUTER_SETTINGS}


def check_output(output: str) -> None:
    """Refuse up front an --output that could not be written or that holds something other than a MODE: the
    assembly replaces the whole directory, so it must never take a run directory (or a folder of runs) with it."""
    path = check_output_dir(output)
    if path.is_dir() and any(path.iterdir()) and not holds_mode(path):
        raise InputError(
            f"--output {output!r} holds other files and no assembled MODE: the assembly replaces the whole "
            "directory, so give a new or empty one."
        )


def holds_mode(path: Path) -> bool:
    try:
        return read_json(path / "config.json").get("model_type") == ModeCLIPConfig.model_type
    except (OSError, ValueError):
        return False


def check_router_settings(num_experts: int, router_settings: dict) -> None:
    """Refuse bad routing flags before any model is loaded (the config checks them)."""
    try:
        ModeCLIPConfig(num_experts=num_experts, **router_settings)
    except ValueError as error:
        raise InputError(f"Routing flags: {error}") from error


def expert_runs(paths: list[str], num_experts: int) -> list[str]:
    """The finished expert runs, ordered by the cluster each trained on (its training_args.json says which); every
    cluster exactly once."""
    by_cluster = {}
    for path in paths:
        if not os.path.isdir(path):
            raise InputError(f"Expert {path!r} does not exist.")
        if not os.path.isfile(os.path.join(path, TRAINING_ARGS)):
            raise InputError(f"Expert {path!r} is not the output of train/expert.py (it has no {TRAINING_ARGS}).")
        with naming_failures("Expert", path):
            finished, record = is_finished(path), read_json(os.path.join(path, TRAINING_ARGS))
        if not finished:
            raise InputError(
                f"Expert {path!r} is not finished: resume it (train/expert.py --resume with its flags) and assemble "
                "once it has saved its final model."
            )
        cluster = record["run"]["cluster"]
        if cluster is None:
            raise InputError(f"{path!r} trained on all pairs (a seed), not on one cluster.")
        if cluster in by_cluster:
            raise InputError(f"Experts {by_cluster[cluster]!r} and {path!r} both trained on cluster {cluster}.")
        by_cluster[cluster] = path
    missing = sorted(set(range(num_experts)) - set(by_cluster))
    extra = sorted(set(by_cluster) - set(range(num_experts)))
    if missing or extra:
        raise InputError(
            f"The clustering has {num_experts} experts (clusters 0..{num_experts - 1}): "
            f"missing clusters {missing}, unknown clusters {extra}."
        )
    return [by_cluster[k] for k in range(num_experts)]


def load_experts(ordered: list[str]) -> list[CLIPModel]:
    """The experts' CLIPModels; all must share one architecture."""
    experts = []
    for path in ordered:
        with naming_failures("Expert", path):
            experts.append(CLIPModel.from_pretrained(path, dtype=torch.float32).eval())
        if _architecture(experts[-1].config) != _architecture(experts[0].config):
            raise InputError(
                f"Expert {path!r} has another architecture than {ordered[0]!r}: all experts must share one "
                "(fork them all from the same seed)."
            )
    return experts


def load_router(path: str) -> tuple[CaptionEncoder, CLIPProcessor]:
    """The router's caption encoder, whose model is the MODE's router text tower (a CLIP text tower, projected: a
    CLIPModel such as the seed, or a CLIPTextModelWithProjection), and the seed's tokenizer and image processor as
    the CLIPProcessor the MODE is saved with. The processor is loaded apart from the encoder's tokenizer, whose
    truncation setting (from re-expressing centroids) would otherwise be saved with it."""
    with naming_failures("--router-text-model", path):
        encoder = CaptionEncoder(path, "projection", device="cpu")  # float32, the precision the MODE is saved in
        return encoder, CLIPProcessor.from_pretrained(path)


def same_encoder(clustering_encoder: str | None, router_path: str) -> bool:
    if clustering_encoder is None:
        return False
    if os.path.exists(clustering_encoder) and os.path.exists(router_path):
        return os.path.realpath(clustering_encoder) == os.path.realpath(router_path)
    return clustering_encoder == router_path


@dataclass
class LabelledCopy:
    """An in-memory clustering's pairs: its labelled copy `dataset/`, cut into the embedding pass's shards of
    --shard-rows rows."""

    captions: Dataset  # the caption column alone: images are never decoded
    caption_column: str
    fine_ids: np.ndarray
    shards: EmbeddingShards  # the run's shard layout (only its rows are used: no embedding is read)
    caption_seed: int

    @classmethod
    def read(cls, clusters: str, report: dict) -> "LabelledCopy":
        folder = Path(clusters)
        dataset = load_pairs(str(folder / "dataset"), report.get("split", "train"))
        caption_column = report.get("caption_column", "caption")
        missing = sorted({caption_column, "fine_id"} - set(dataset.column_names))
        if missing:
            raise InputError(f"{str(folder / 'dataset')!r} has no column {missing}: it is not the clustering's.")
        meta = embedding_settings(folder, report, ("num_rows", "shard_rows", "embed_dim"))
        if meta["num_rows"] != len(dataset):
            raise InputError(
                f"{str(folder / 'dataset')!r} has {len(dataset)} pairs, but the clustering embedded "
                f"{meta['num_rows']}: it is not that clustering's dataset."
            )
        captions, fine_ids = dataset.select_columns([caption_column]), cluster_ids(dataset, "fine_id")
        shards = EmbeddingShards(folder / "embeddings", meta)
        return cls(captions, caption_column, fine_ids, shards, meta["caption_seed"])

    @property
    def num_shards(self) -> int:
        return self.shards.num_shards

    def shard(self, shard: int) -> tuple[list[str | None], np.ndarray]:
        """The captions the clustering embedded for a shard's pairs (None: no usable caption), and their fine ids."""
        rows = self.shards.rows_of(shard)
        chosen = shard_captions(self.captions, self.caption_column, self.shards, shard, self.caption_seed)
        return chosen, self.fine_ids[rows.start : rows.stop]


@dataclass
class LabelledDataFiles:
    """A streaming clustering's pairs: the data files it read, each its own embedding shard, joined by key with the
    labels table's part of that file. The data files are read for their caption column only, as the clustering read
    them, at the paths it recorded (a Hub file's path names the commit it was read at)."""

    labels: Path
    files: list[str]
    caption_column: str
    caption_seed: int

    @classmethod
    def read(cls, clusters: str, report: dict) -> "LabelledDataFiles":
        folder = Path(clusters)
        meta = read_run_labels(folder, report)
        seed = embedding_settings(folder, report, ())["caption_seed"]
        files = [file["path"] for file in meta["data_files"]]
        try:
            check_labels_match(meta, meta["dataset"], meta["split"], files)  # each file as big as when clustered
        except OSError as error:  # fsspec's own message names the file
            raise InputError(f"a data file of the clustering {folder} is gone ({error}): cluster again.") from error
        return cls(folder / LABELS_DIR, files, meta["caption_column"], seed)

    @property
    def num_shards(self) -> int:
        return len(self.files)

    def shard(self, shard: int) -> tuple[list[str | None], np.ndarray]:
        """Data file `shard`'s captions as the clustering chose them (`embedding.embed_data_files`), and their fine
        ids. The caption choice draws from one generator in file order: the keys must match the table's one for one,
        in order, not merely as a set."""
        file = self.files[shard]
        keys, chosen = data_file_captions(file, self.caption_column, shard, self.caption_seed)
        part = read_part(self.labels, shard, columns=["key", "fine_id"])
        labelled_keys = part["key"].to_pylist()
        if keys != labelled_keys:
            raise InputError(
                f"data file {file!r} is not the one the labels table {self.labels} was made from "
                f"({first_difference(keys, labelled_keys)}): it changed since the clustering; cluster again."
            )
        return chosen, part["fine_id"].to_numpy().astype(np.int64)


def first_difference(keys: list[str], labelled_keys: list[str]) -> str:
    """Where a data file's keys part from its labels part's, for an error message."""
    for at, (key, labelled) in enumerate(zip(keys, labelled_keys)):
        if key != labelled:
            return f"its pair {at} is {key!r}, the table's {labelled!r}"
    return f"it holds {len(keys)} pairs, the table {len(labelled_keys)}"


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


def clustered_pairs(clusters: str, report: dict) -> LabelledCopy | LabelledDataFiles:
    """A finished clustering's pairs, shard by shard as it embedded them: one shard per data file for a streaming
    run, else shards of rows of its labelled copy."""
    return (LabelledDataFiles if report.get("streaming") else LabelledCopy).read(clusters, report)


def caption_centroids(
    encoder: CaptionEncoder, pairs: LabelledCopy | LabelledDataFiles, num_fine_clusters: int, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each fine cluster's centroid in the router's space: the mean of its pairs' L2-normalised router embeddings,
    normalised like the spherical k-means centroids it replaces; and which fine clusters have captions at all (pairs
    are labelled by nearest centre, which can leave a centre without any). Each pair's caption is the one the
    clustering embedded (a list's seeded choice), so both spaces describe a cluster by the same captions."""
    sums = torch.zeros(num_fine_clusters, encoder.embed_dim)
    counts = np.zeros(num_fine_clusters, dtype=np.int64)
    start = time.perf_counter()
    for shard in tqdm(range(pairs.num_shards), unit="shards", desc="re-expressing centroids", dynamic_ncols=True):
        chosen, ids = pairs.shard(shard)
        labelled = np.flatnonzero(ids >= 0)  # a labelled pair had a caption to embed
        if labelled.size:
            embeddings = encoder.encode([chosen[i] for i in labelled], batch_size)
            sums.index_add_(0, torch.as_tensor(ids[labelled]), torch.from_numpy(embeddings))
            counts += np.bincount(ids[labelled], minlength=num_fine_clusters)
    if not counts.any():
        raise InputError("No pair of the clustered dataset has a fine cluster: no centroid can be re-expressed.")
    seconds = time.perf_counter() - start
    logger.info(
        f"re-expressed centroids from {counts.sum()} captions in {seconds:.1f} s "
        f"({counts.sum() / seconds:.0f} captions/s)"
    )
    return torch.nn.functional.normalize(sums, dim=-1), torch.as_tensor(counts > 0)


def assemble(
    experts: list[str],
    clusters: str,
    router_text_model: str,
    output: str,
    recompute_centroids: bool = False,
    **router_settings,
) -> ModeCLIPModel:
    """Experts + the clustering's outputs + the router text tower -> a `ModeCLIPModel` saved in `output`, with the
    router's tokenizer and image processor as one CLIPProcessor (`AutoProcessor` loads it) and an assembly.json of
    where each part came from.

    Only finished runs are taken (train/expert.py's and train/cluster.py's completion markers), and `output` is
    written whole or not at all: a crash leaves the previous assembly (or none), never a config.json without the
    weights or remote code it needs.
    """
    check_output(output)
    fit, report = read_finished_run(clusters)
    check_router_settings(fit.num_experts, router_settings)
    expert_paths = expert_runs(experts, fit.num_experts)
    expert_models = load_experts(expert_paths)
    encoder, processor = load_router(router_text_model)
    router = encoder.model

    clustering_encoder = report.get("encoder")
    reexpress = (
        recompute_centroids
        or not same_encoder(clustering_encoder, router_text_model)
        or fit.embed_dim != router.config.projection_dim
    )
    centroids, fine_to_coarse, dropped = torch.from_numpy(fit.fine_centroids), fit.fine_to_coarse.tolist(), []
    if reexpress:
        pairs = clustered_pairs(clusters, report)
        centroids, has_captions = caption_centroids(encoder, pairs, len(fine_to_coarse))
        # A fine cluster no pair was labelled with has no place in the router's space, and routes nothing: drop it.
        dropped = np.flatnonzero(~has_captions.numpy()).tolist()
        centroids = centroids[has_captions]
        fine_to_coarse = [k for k, kept in zip(fine_to_coarse, has_captions) if kept]
    provenance = {
        "clustering_encoder": clustering_encoder,
        "centroids_reexpressed": reexpress,
        "centroid_space": "router: mean caption embedding per fine cluster" if reexpress else "clustering encoder",
        "dropped_empty_fine_clusters": dropped,
    }
    model = ModeCLIPModel.from_experts(
        expert_models, centroids, fine_to_coarse, router, **provenance, **router_settings
    )
    record = {  # local paths, for whoever resumes or audits this run here; hub_cards/push.py publishes their names
        "experts": [os.path.abspath(path) for path in expert_paths],  # expert k trained on cluster k
        "clusters": os.path.abspath(clusters),
        "clustering": report,
        "router_text_model": router_text_model,
        "expert_training": [read_json(os.path.join(path, TRAINING_ARGS)) for path in expert_paths],
        **provenance,
        "router_settings": router_settings,
    }
    with atomic_directory(output) as scratch:
        for part in (model, processor):
            part.save_pretrained(scratch)
        write_json(scratch / ASSEMBLY, record)
    return model
