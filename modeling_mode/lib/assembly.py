"""Assembling trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

When the clustering embedded captions with another encoder than the router (e.g. SimCSE or MiniLM), each fine
centroid is re-expressed in the router's space as the mean router embedding of its cluster's captions.
"""

import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPTextModelWithProjection

from ..configuration_mode_clip import ModeCLIPConfig, text_tower_config
from ..modeling_mode_clip import ModeCLIPModel, _architecture
from .clustering import read_finished_run
from .data import cluster_ids, load_pairs
from .errors import InputError, check_output_dir, naming_failures
from .files import atomic_directory, read_json, write_json
from .training import TRAINING_ARGS, is_finished

ASSEMBLY = "assembly.json"


def router_from(path: str) -> CLIPTextModelWithProjection:
    """The text tower with its projection from a CLIPModel (the seed) or a CLIPTextModelWithProjection directory."""
    if AutoConfig.from_pretrained(path).model_type != "clip":
        return CLIPTextModelWithProjection.from_pretrained(path, dtype=torch.float32)
    clip = CLIPModel.from_pretrained(path, dtype=torch.float32)
    with torch.device("meta"):  # weights come from the CLIP right away
        router = CLIPTextModelWithProjection(text_tower_config(clip.config))
    router.text_model = clip.text_model
    router.text_projection = clip.text_projection
    return router.eval()


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


def load_router(path: str):
    """The router text tower, and the tokenizer and image processor the MODE is saved with."""
    with naming_failures("--router-text-model", path):
        return router_from(path), AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)


def same_encoder(clustering_encoder: str | None, router_path: str) -> bool:
    if clustering_encoder is None:
        return False
    if os.path.exists(clustering_encoder) and os.path.exists(router_path):
        return os.path.realpath(clustering_encoder) == os.path.realpath(router_path)
    return clustering_encoder == router_path


def first_caption(captions) -> str:
    return captions if isinstance(captions, str) else captions[0]


@torch.no_grad()
def caption_centroids(
    router: CLIPTextModelWithProjection,
    tokenizer,
    dataset,
    caption_column: str,
    num_fine_clusters: int,
    batch_size: int = 256,
) -> torch.Tensor:
    """Each fine cluster's centroid in the router's space: the mean of its captions' L2-normalised router embeddings
    (the first caption of a list), normalised like the spherical k-means centroids it replaces; and which fine
    clusters have captions at all (pairs are labelled by nearest centre, which can leave a centre without any)."""
    fine_ids = cluster_ids(dataset, "fine_id")
    sums = torch.zeros(num_fine_clusters, router.config.projection_dim)
    rows = np.flatnonzero(fine_ids >= 0)
    captions = dataset.select_columns([caption_column])
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        text = [first_caption(c) for c in captions.select(chunk)[caption_column]]
        tokens = tokenizer(
            text, padding=True, truncation=True, max_length=router.config.max_position_embeddings, return_tensors="pt"
        )
        embeds = torch.nn.functional.normalize(router(**tokens).text_embeds.float(), dim=-1)
        sums.index_add_(0, torch.as_tensor(fine_ids[chunk]), embeds)
    counts = np.bincount(fine_ids[rows], minlength=num_fine_clusters)
    if not counts.any():
        raise InputError("No pair of the clustered dataset has a fine cluster: no centroid can be re-expressed.")
    return torch.nn.functional.normalize(sums, dim=-1), torch.as_tensor(counts > 0)


def clustered_pairs(clusters: str, report: dict):
    """The clustering run's labelled pairs, which the centroids are re-expressed from."""
    dataset = load_pairs(os.path.join(clusters, "dataset"), report.get("split", "train"))
    caption_column = report.get("caption_column", "caption")
    missing = sorted({caption_column, "fine_id"} - set(dataset.column_names))
    if missing:
        raise InputError(f"{os.path.join(clusters, 'dataset')!r} has no column {missing}: it is not the clustering's.")
    return dataset, caption_column


def assemble(
    experts: list[str],
    clusters: str,
    router_text_model: str,
    output: str,
    recompute_centroids: bool = False,
    **router_settings,
) -> ModeCLIPModel:
    """Experts + the clustering's outputs + the router text tower -> a `ModeCLIPModel` saved in `output`, with the
    router's tokenizer and image processor and an assembly.json of where each part came from.

    Only finished runs are taken (train/expert.py's and train/cluster.py's completion markers), and `output` is
    written whole or not at all: a crash leaves the previous assembly (or none), never a config.json without the
    weights or remote code it needs.
    """
    check_output(output)
    fit, report = read_finished_run(clusters)
    check_router_settings(fit.num_experts, router_settings)
    expert_paths = expert_runs(experts, fit.num_experts)
    expert_models = load_experts(expert_paths)
    router, tokenizer, image_processor = load_router(router_text_model)

    encoder = report.get("encoder")
    reexpress = (
        recompute_centroids
        or not same_encoder(encoder, router_text_model)
        or fit.embed_dim != router.config.projection_dim
    )
    centroids, fine_to_coarse, dropped = torch.from_numpy(fit.fine_centroids), fit.fine_to_coarse.tolist(), []
    if reexpress:
        dataset, caption_column = clustered_pairs(clusters, report)
        centroids, has_captions = caption_centroids(router, tokenizer, dataset, caption_column, len(fine_to_coarse))
        # A fine cluster no pair was labelled with has no place in the router's space, and routes nothing: drop it.
        dropped = np.flatnonzero(~has_captions.numpy()).tolist()
        centroids = centroids[has_captions]
        fine_to_coarse = [k for k, kept in zip(fine_to_coarse, has_captions) if kept]
    provenance = {
        "clustering_encoder": encoder,
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
        for part in (model, tokenizer, image_processor):
            part.save_pretrained(scratch)
        write_json(scratch / ASSEMBLY, record)
    return model
