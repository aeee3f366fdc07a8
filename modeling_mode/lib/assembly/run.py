"""Assembling trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

When the clustering embedded captions with another encoder than the router (e.g. SimCSE or MiniLM), each fine
centroid is re-expressed in the router's space as the mean router embedding of its cluster's captions: the captions
the clustering embedded, read shard by shard as it read them (`clustered_corpus`), from its labelled copy `dataset/`
(in memory) or from the corpus' data files joined with its labels table `labels/` (`--streaming`).
"""

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, PreTrainedModel, ProcessorMixin

from ...configuration_mode_clip import ModeCLIPConfig
from ...families import family_of, text_embed_dim
from ...modeling_mode_clip import ModeCLIPModel, _architecture
from ...tokenization_mode_clip import routed_tokenizer
from ..clustering.clustered_corpus import ClusteredCorpus, clustering_corpus
from ..clustering.embedding import CaptionEncoder
from ..clustering.outputs import read_finished_run
from ..core.checks import files_inside, naming_failures
from ..core.errors import InputError
from ..core.files import atomic_directory, read_json, write_json
from ..core.processors import load_processor
from ..core.status import ProgressBar
from ..training.checkpoints import is_checkpoint
from ..training.outputs import TRAINING_ARGS, is_finished, read_adapters
from .outputs import ASSEMBLY, SEED_FOLDER, ModelOutputArguments, check_output

logger = logging.getLogger(__name__)
ROUTER_SETTINGS = ("routing", "router_lambda", "router_top_k", "router_temperature")
# Which space routes: the seed CLIP's text tower (the centroids re-expressed there when the clustering used another
# encoder), or the clustering encoder's own, the paper's (its centroids as fitted; the MODE carries that encoder).
ROUTERS = ("auto", "seed-text", "clustering-encoder")


@dataclass
class AssembleArguments(ModelOutputArguments):
    """Flags of `train/assemble.py`; `--push_to_hub` pushes the model with its card (`publish`)."""

    experts: list[str] = field(metadata={"help": "Expert run directories (train/expert.py outputs), any order."})
    clusters: str = field(
        metadata={"help": "Clustering output: clusters.safetensors, clusters.json, dataset/ or labels/ (--streaming)."}
    )
    router_text_model: str = field(metadata={"help": "The seed CLIP: its text tower routes tasks; its processor."})
    output: str = field(metadata={"help": "Directory of the assembled ModeCLIPModel.", "aliases": ["--output_dir"]})
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "The corpus a --streaming clustering read (its folder, pattern, file or Hub id, or a copy of it "
            "anywhere): re-expressing its centroids reads the captions from there. Its labels table only names "
            "the files, relative to the corpus root; it never says where to read."
        },
    )
    router: str = field(
        default="auto",
        metadata={
            "help": "Which space routes: clustering-encoder (the clustering's encoder and centroids, as the paper "
            "routes), seed-text (--router-text-model's text tower, centroids re-expressed in it), or auto: the "
            "clustering's encoder when it is a sentence encoder, else the seed's text tower.",
            "choices": ROUTERS,
        },
    )
    recompute_centroids: bool = field(
        default=False,
        metadata={"help": "Re-express the fine centroids in the router's space even if the clustering used it."},
    )
    save_seed: bool = field(
        default=True,
        metadata={
            "help": "Save the checkpoint the experts forked from (weights, optimizer, schedule) in OUTPUT/seed/, "
            "so that the MODE can grow new experts wherever it is published; --no-save-seed leaves it out."
        },
    )
    routing: str = field(default="paper", metadata={"help": "paper, released or uniform."})
    router_lambda: float = field(
        default=0.2,
        metadata={
            "help": "Kernel width of the paper's routing: 0.2, the paper's, in SimCSE's space; all-MiniLM-L6-v2's "
            "space routes prompts it never saw at 2.0 (docs/model.md, routing)."
        },
    )
    router_top_k: int | None = field(default=None, metadata={"help": "Keep only the k highest-weighted experts."})
    router_temperature: float = field(default=8.0, metadata={"help": "Softmax temperature of the released routing."})

    @property
    def router_settings(self) -> dict:
        return {name: getattr(self, name) for name in ROUTER_SETTINGS}


def check_router_settings(num_experts: int, router_settings: dict) -> None:
    """Refuse bad routing flags before any model is loaded (the config checks them)."""
    try:
        ModeCLIPConfig(num_experts=num_experts, **router_settings)
    except ValueError as error:
        raise InputError(f"Routing flags: {error}") from error


def trained_on_clustering(record: dict) -> Path | None:
    """The clustering run whose labelled copy (`dataset/`) or labels table (`labels/`) an expert trained on, where
    its record names one; None for other data (e.g. a reshard's cluster)."""
    for path in (record.get("args", {}).get("dataset"), record.get("args", {}).get("labels")):
        if path and Path(path).name in ("dataset", "labels") and (Path(path).parent / "clusters.json").is_file():
            return Path(path).parent
    return None


def expert_runs(paths: list[str], num_experts: int, clusters: str | None = None) -> list[str]:
    """The finished expert runs, ordered by the cluster each trained on (its training_args.json says which); every
    cluster exactly once, and none trained on another clustering than `clusters`."""
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
        other = trained_on_clustering(record)
        if clusters is not None and other is not None and other.resolve() != Path(clusters).resolve():
            raise InputError(
                f"Expert {path!r} trained on the clustering {str(other)!r}, not on --clusters {clusters!r}: its "
                "cluster ids are another clustering's."
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


def load_expert(path: str, what: str = "Expert") -> PreTrainedModel:
    """A trained expert (or seed): a model of a MODE family, as AutoModel loads it, in float32."""
    with naming_failures(what, path):
        family_check(read_json(os.path.join(path, "config.json")), f"{what} {path!r}")
        return AutoModel.from_pretrained(path, dtype=torch.float32).eval()


def family_check(config: dict, what: str) -> None:
    """Refuse a checkpoint of another kind than the MODE families, naming its model_type and the families."""
    try:
        family_of(config.get("model_type"))
    except ValueError as error:
        raise InputError(f"{what}: {error}") from error


def load_experts(ordered: list[str]) -> list[PreTrainedModel]:
    """The experts' models; all must be of one family and share one architecture."""
    experts = []
    for path in ordered:
        experts.append(load_expert(path))
        if _architecture(experts[-1].config) != _architecture(experts[0].config):
            raise InputError(
                f"Expert {path!r} has another architecture than {ordered[0]!r} ({experts[-1].config.model_type} "
                f"and {experts[0].config.model_type}): all experts must be of one family and share one architecture "
                "(fork them all from the same seed)."
            )
    return experts


def load_router(path: str) -> tuple[CaptionEncoder, ProcessorMixin]:
    """The router's caption encoder, whose model is the MODE's router text tower (the seed's text tower, projected:
    from the seed, or from a checkpoint of the tower alone), and the seed's tokenizer and image processor as the
    processor the MODE is saved with (`AutoProcessor`'s: a CLIPProcessor, SiglipProcessor, ...). The processor is
    loaded apart from the encoder's tokenizer, whose truncation setting (from re-expressing centroids) would
    otherwise be saved with it."""
    with naming_failures("--router-text-model", path):
        config = read_json(os.path.join(path, "config.json")) if os.path.isdir(path) else None
        if config is not None and not config.get("model_type", "").endswith("_text_model"):
            family_check(config, f"--router-text-model {path!r}")
        encoder = CaptionEncoder(path, "projection", device="cpu")  # float32, the precision the MODE is saved in
        return encoder, load_processor(path)


def clustering_encoder_router(report: dict, processor: ProcessorMixin) -> tuple[CaptionEncoder, ProcessorMixin]:
    """The clustering's caption encoder as the router (pooled as the clustering pooled), and the seed's processor
    with a MODE tokenizer (`ModeCLIPTokenizer`, ...) that also tokenizes for it."""
    path = report.get("encoder")
    if path is None:
        raise InputError("the clustering's clusters.json names no encoder: --router clustering-encoder needs one.")
    with naming_failures("The clustering's encoder", path):
        encoder = CaptionEncoder(path, report.get("pooling"), device="cpu")
    if encoder.pooling == "projection":
        raise InputError(
            f"the clustering's encoder {path!r} is a dual encoder's text tower: it is the seed-text router (--router "
            "seed-text)."
        )
    try:
        tokenizer = routed_tokenizer(processor.tokenizer, encoder.tokenizer)
    except ValueError as error:
        raise InputError(f"--router clustering-encoder: {error}") from error
    return encoder, type(processor)(image_processor=processor.image_processor, tokenizer=tokenizer)


def resolve_router(router: str, report: dict) -> str:
    """`--router auto`: the paper's router (the clustering's encoder) when the clustering used a sentence encoder,
    the seed's text tower when it used a CLIP's (then both are the same space) or names none."""
    if router != "auto":
        return router
    sentence_encoder = report.get("encoder") is not None and report.get("pooling") != "projection"
    return "clustering-encoder" if sentence_encoder else "seed-text"


def same_encoder(clustering_encoder: str | None, router_path: str) -> bool:
    if clustering_encoder is None:
        return False
    if os.path.exists(clustering_encoder) and os.path.exists(router_path):
        return os.path.realpath(clustering_encoder) == os.path.realpath(router_path)
    return clustering_encoder == router_path


def caption_centroids(
    encoder: CaptionEncoder, corpus: ClusteredCorpus, num_fine_clusters: int, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each fine cluster's centroid in the router's space: the mean of its pairs' L2-normalised router embeddings,
    normalised like the spherical k-means centroids it replaces; and which fine clusters have captions at all (pairs
    are labelled by nearest centre, which can leave a centre without any). Each pair's caption is the one the
    clustering embedded (a list's seeded choice), so both spaces describe a cluster by the same captions."""
    sums = torch.zeros(num_fine_clusters, encoder.embed_dim)
    counts = np.zeros(num_fine_clusters, dtype=np.int64)
    start = time.perf_counter()
    for part in ProgressBar(
        range(corpus.num_parts), unit="shards", desc="re-expressing centroids", dynamic_ncols=True
    ):
        chosen, ids = corpus.clustered_captions(part)
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
    router_space: str = "auto",
    with_seed: bool = True,
    dataset: str | None = None,
    overwrite_output_dir: bool = False,
    **router_settings,
) -> ModeCLIPModel:
    """Experts + the clustering's outputs + the router text tower -> a `ModeCLIPModel` saved in `output`, with the
    router's tokenizer and image processor as one CLIPProcessor (`AutoProcessor` loads it) and an assembly.json of
    where each part came from.

    Only finished runs are taken (train/expert.py's and train/cluster.py's completion markers), and `output` is
    written whole or not at all: a crash leaves the previous assembly (or none), never a config.json without the
    weights or remote code it needs. An `output` holding a MODE already is replaced only with `overwrite_output_dir`.
    """
    check_output(output, overwrite_output_dir)
    fit, report = read_finished_run(clusters)
    check_router_settings(fit.num_experts, router_settings)
    expert_paths = expert_runs(experts, fit.num_experts, clusters)
    expert_training = [read_json(os.path.join(path, TRAINING_ARGS)) for path in expert_paths]
    seed = seed_files(expert_training) if with_seed else None
    encoder, processor = load_router(router_text_model)
    clustering_encoder = report.get("encoder")
    router_space = resolve_router(router_space, report)
    if router_space == "clustering-encoder":
        encoder, processor = clustering_encoder_router(report, processor)
    router = encoder.model

    reexpress = router_space == "seed-text" and (
        recompute_centroids
        or not same_encoder(clustering_encoder, router_text_model)
        or fit.embed_dim != text_embed_dim(router.config)
    )
    centroids, fine_to_coarse, dropped = torch.from_numpy(fit.fine_centroids), fit.fine_to_coarse.tolist(), []
    corpus = clustering_corpus(clusters, report, dataset) if reexpress else None  # checked before the experts load
    lora = lora_settings(expert_paths)
    lora_seed = lora_seed_checkpoint(expert_training) if lora else None
    expert_models = None if lora else load_experts(expert_paths)
    if reexpress:
        corpus.check_unchanged(Path(clusters), report)
        centroids, has_captions = caption_centroids(encoder, corpus, len(fine_to_coarse))
        # A fine cluster no pair was labelled with has no place in the router's space, and routes nothing: drop it.
        dropped = np.flatnonzero(~has_captions.numpy()).tolist()
        centroids = centroids[has_captions]
        fine_to_coarse = [k for k, kept in zip(fine_to_coarse, has_captions) if kept]
    provenance = {
        "router_space": router_space,
        "clustering_encoder": clustering_encoder,
        "centroids_reexpressed": reexpress,
        "centroid_space": "router: mean caption embedding per fine cluster" if reexpress else "clustering encoder",
        "dropped_empty_fine_clusters": dropped,
        # how far the clustering's pairs lay from their centres, in the centres' space (as fitted only): the yardstick
        # of new pairs when the MODE grows
        "fine_distance_quantiles": None if reexpress else report.get("fine_distance_quantiles"),
    }
    clusters_and_router = (centroids, fine_to_coarse, router)
    settings = {"router_pooling": encoder.pooling, **provenance, **router_settings}
    if lora:
        seed_model = load_expert(lora_seed, "The LoRA experts' seed")
        adapters = [read_adapters(path)[1] for path in expert_paths]
        model = ModeCLIPModel.from_lora_experts(seed_model, adapters, lora, *clusters_and_router, **settings)
    else:
        model = ModeCLIPModel.from_experts(expert_models, *clusters_and_router, **settings)
    record = {  # local paths, for whoever resumes or audits this run here; `publish` publishes their names
        "experts": [os.path.abspath(path) for path in expert_paths],  # expert k trained on cluster k
        "clusters": os.path.abspath(clusters),
        "clustering": report,
        "router_text_model": router_text_model,
        "expert_training": expert_training,
        **provenance,
        "router_settings": router_settings,
    }
    with atomic_directory(output) as scratch:
        for part in (model, processor):
            part.save_pretrained(scratch)
        write_json(scratch / ASSEMBLY, record)
        if seed is not None:
            copy_seed(seed, scratch / SEED_FOLDER)
    return model


def lora_settings(expert_paths: list[str]) -> dict | None:
    """The experts' LoRA settings (rank, alpha, target modules), None for full experts; refused where some experts
    are LoRA experts and some are not, or their settings differ: one MODE stores one seed and one kind of adapter."""
    settings = [(read_adapters(path) or (None,))[0] for path in expert_paths]
    if any(s != settings[0] for s in settings):
        described = "; ".join(f"{path}: {s or 'full fine-tuning'}" for path, s in zip(expert_paths, settings))
        raise InputError(
            f"the experts were trained in different ways, LoRA or not or with other settings: {described}."
        )
    return settings[0]


def lora_seed_checkpoint(expert_training: list[dict]) -> str:
    """The checkpoint LoRA experts' adapters were trained on: their adapters are deltas to its weights, so a LoRA MODE
    needs it, shared by all."""
    checkpoint = fork_checkpoint(expert_training)
    if checkpoint is None:
        raise InputError(
            "LoRA experts are adapters of the seed they forked from, and these share no fork checkpoint on this disk "
            "(checkpoints/step_N of the seed run): fork every expert from the same seed checkpoint, and keep it."
        )
    return checkpoint


def fork_checkpoint(expert_training: list[dict]) -> str | None:
    """The checkpoint every expert forked from (weights, optimizer, schedule), if they share one still on disk."""
    starts = {(record["run"].get("start"), record["run"].get("start_checkpoint")) for record in expert_training}
    if len(starts) != 1:
        return None
    start, checkpoint = starts.pop()
    return checkpoint if start == "fork" and checkpoint and is_checkpoint(checkpoint) else None


def seed_files(expert_training: list[dict]) -> tuple[Path, list[Path]] | None:
    """The experts' fork checkpoint, which the MODE carries as its `seed/` (so that it can grow new experts forked as
    its own were, `train/grow.py`, wherever it is published), and its files; None where they share none on this
    disk. Only the checkpoint's own files go (`files_inside`): a link in it would publish a file from elsewhere."""
    checkpoint = fork_checkpoint(expert_training)
    if checkpoint is None:
        logger.warning("the experts share no fork checkpoint on this disk: the MODE is saved without its seed/")
        return None
    return Path(checkpoint), files_inside(checkpoint, "The experts' fork checkpoint")


def copy_seed(seed: tuple[Path, list[Path]], folder: Path) -> None:
    """Copy the fork checkpoint's files (`seed_files`) into `folder`."""
    checkpoint, files = seed
    for relative in files:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint / relative, folder / relative)
