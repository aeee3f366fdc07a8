"""Task-level routing of MODE (Ma et al., CVPR 2024, section 3.3): how much each data expert counts for a task.

The weights depend on the task's metadata (e.g. its class names), never on the image. Both functions take the task's
class embeddings [n_classes, d] (L2-normalised, in the space of the fine centroids), the fine centroids [m, d] and the
fine-to-expert map [m], and return unnormalised log-weights [num_experts]: their softmax is p(expert | task).
They compute in the dtype they are given: `ModeCLIPModel.route_embeddings` gives them float32 whatever the model's.
"""

import math

import torch

# Constants of the authors' released ensembling code (`smooth_weight=[5.0, 8.0]`, `too_many_class=200`).
RELEASED_SHARPNESS = 5.0
RELEASED_MANY_CLASSES = 200


def _sum_per_expert(values: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.zeros(num_experts, dtype=values.dtype, device=values.device).index_add_(0, experts, values)


def paper_log_weights(
    class_embeds: torch.Tensor,
    centroids: torch.Tensor,
    fine_to_coarse: torch.Tensor,
    num_experts: int,
    router_lambda: float,
) -> torch.Tensor:
    """Eq. 4-6 of the paper: log p(c | T) = sum over classes l and fine centres s of c of A[l, s] (+ const).

    A[l, s] = exp(-||e_l - e_s||^2 / lambda), kept only for the class's nearest fine centre. Small tasks (< 10
    classes) are sharpened by exp(0.5 - sqrt|L|); for large ones (> 200 classes) lambda is divided by log|L|.
    """
    num_classes = class_embeds.shape[0]
    if num_classes > 200:
        router_lambda = router_lambda / math.log(num_classes)
    sq_dist, nearest = torch.cdist(class_embeds, centroids).pow(2).min(dim=1)
    affinity = torch.exp(-sq_dist / router_lambda)
    if num_classes < 10:
        affinity = affinity * math.exp(0.5 - math.sqrt(num_classes))
    return _sum_per_expert(affinity, fine_to_coarse[nearest], num_experts)


def released_log_weights(
    class_embeds: torch.Tensor,
    centroids: torch.Tensor,
    fine_to_coarse: torch.Tensor,
    num_experts: int,
    temperature: float,
) -> torch.Tensor:
    """The authors' released code: each class votes exp(b * (a - d_l)) for the expert of its nearest fine centre.

    d_l is the (unsquared) distance to that centre, a = exp(0.5 - sqrt|L|) for |L| < 10 else 0,
    b = 5 log10(max(10, |L| - 200)); the votes are summed per expert and divided by the temperature.
    """
    num_classes = class_embeds.shape[0]
    dist, nearest = torch.cdist(class_embeds, centroids).min(dim=1)
    shift = math.exp(0.5 - math.sqrt(num_classes)) if num_classes < 10 else 0.0
    sharpness = RELEASED_SHARPNESS * math.log10(max(10, num_classes - RELEASED_MANY_CLASSES))
    votes = torch.exp(sharpness * (shift - dist))
    return _sum_per_expert(votes, fine_to_coarse[nearest], num_experts) / temperature


def keep_top_k(weights: torch.Tensor, k: int | None) -> torch.Tensor:
    """Zero all but the k largest weights and renormalise them to sum to one."""
    if k is None or k >= weights.numel():
        return weights
    top = weights.topk(k)
    kept = torch.zeros_like(weights).scatter_(0, top.indices, top.values)
    return kept / kept.sum()
