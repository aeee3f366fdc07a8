"""Assembling trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

When the clustering embedded captions with another encoder than the router (e.g. SimCSE or MiniLM), each fine
centroid is re-expressed in the router's space as the mean router embedding of its cluster's captions.
"""

import os

import numpy as np
import safetensors.torch
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPTextModelWithProjection

from .configuration_mode_clip import text_tower_config
from .data import cluster_ids, load_pairs
from .errors import InputError
from .files import read_json, write_json
from .modeling_mode_clip import ModeCLIPModel, _architecture
from .training import TRAINING_ARGS, save_into

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


def load_experts(paths: list[str], num_experts: int) -> tuple[list[str], list[CLIPModel]]:
    """Experts' paths and models, ordered by the cluster each trained on (its training_args.json says which); every
    cluster exactly once."""
    by_cluster = {}
    for path in paths:
        if not os.path.isdir(path):
            raise InputError(f"Expert {path!r} does not exist.")
        args_file = os.path.join(path, TRAINING_ARGS)
        if not os.path.isfile(os.path.join(path, "config.json")) or not os.path.isfile(args_file):
            raise InputError(f"Expert {path!r} is not the output of train/expert.py (config.json, {TRAINING_ARGS}).")
        cluster = read_json(args_file)["run"]["cluster"]
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
    ordered = [by_cluster[k] for k in range(num_experts)]
    experts = [CLIPModel.from_pretrained(path, dtype=torch.float32).eval() for path in ordered]
    for path, expert in zip(ordered, experts):
        if _architecture(expert.config) != _architecture(experts[0].config):
            raise InputError(
                f"Expert {path!r} has another architecture than {ordered[0]!r}: all experts must share one "
                "(fork them all from the same seed)."
            )
    return ordered, experts


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


def assemble(
    experts: list[str],
    clusters: str,
    router_text_model: str,
    output: str,
    recompute_centroids: bool = False,
    **router_settings,
) -> ModeCLIPModel:
    """Experts + the clustering's outputs + the router text tower -> a `ModeCLIPModel` saved in `output`, with the
    router's tokenizer and image processor and an assembly.json of where each part came from."""
    for name in ("clusters.json", "clusters.safetensors"):
        if not os.path.isfile(os.path.join(clusters, name)):
            raise InputError(f"--clusters {clusters!r} has no {name}: point it at the clustering step's output.")
    metadata = read_json(os.path.join(clusters, "clusters.json"))
    tensors = safetensors.torch.load_file(os.path.join(clusters, "clusters.safetensors"))
    fine_to_coarse = tensors["fine_to_coarse"].tolist()
    num_experts = int(metadata.get("num_experts", max(fine_to_coarse) + 1))
    expert_paths, expert_models = load_experts(experts, num_experts)
    router = router_from(router_text_model)
    tokenizer = AutoTokenizer.from_pretrained(router_text_model)
    image_processor = AutoImageProcessor.from_pretrained(router_text_model)

    encoder = metadata.get("encoder")
    reexpress = (
        recompute_centroids
        or not same_encoder(encoder, router_text_model)
        or tensors["fine_centroids"].shape[1] != router.config.projection_dim
    )
    centroids, dropped = tensors["fine_centroids"], []
    if reexpress:
        dataset = load_pairs(os.path.join(clusters, "dataset"))
        caption_column = metadata.get("caption_column", "caption")
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
    save_into(output, model, tokenizer, image_processor)
    write_json(
        os.path.join(output, ASSEMBLY),
        {
            "experts": [os.path.abspath(path) for path in expert_paths],  # expert k trained on cluster k
            "clusters": os.path.abspath(clusters),
            "clustering": metadata,
            "router_text_model": router_text_model,
            "expert_training": [read_json(os.path.join(path, TRAINING_ARGS)) for path in expert_paths],
            **provenance,
            "router_settings": router_settings,
        },
    )
    return model
