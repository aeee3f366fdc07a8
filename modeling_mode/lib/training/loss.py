"""The families' losses over the global batch, with features gathered across processes and gradients kept: CLIP's
(and MetaCLIP 2's) softmax contrastive loss, SigLIP's (and SigLIP 2's) pairwise sigmoid loss."""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
from torch.nn import functional as F

from ...families import family_of

# A gather whose backward sends each process its rows' gradients; renamed in torch 2.13, the old name warns there.
_all_gather = getattr(collectives, "all_gather_single_autograd", None) or collectives.all_gather_tensor_autograd


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Every process's rows, concatenated in rank order, with gradients flowing back through the gather."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return features
    return _all_gather(features.contiguous(), gather_dim=0, group=dist.group.WORLD)


def process_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of this process's pairs against the whole global batch (local rows x all columns).

    `image_embeds` and `text_embeds` are this process's L2-normalised features [b, d] (every process holds the same
    b); `logit_scale` is the log temperature. Each process averages over its own rows; averaging that over processes,
    as data-parallel training does with gradients, gives the loss and gradient of the full global batch.
    """
    all_image_embeds = gather_with_grad(image_embeds)
    all_text_embeds = gather_with_grad(text_embeds)
    rank = process_rank()
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeds @ all_text_embeds.t()
    logits_per_text = scale * text_embeds @ all_image_embeds.t()
    # This process's pairs sit at rows [rank * b, (rank + 1) * b) of the gathered batch.
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def sigmoid_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's loss (Zhai et al. 2023): -1/|B| sum_i sum_j log sigmoid(z_ij (exp(t) x_i.y_j + b)), z_ij = 1 for a
    pair and -1 for every other image-text combination of the global batch B.

    Each process takes its own images against ALL the gathered texts, gradients flowing back through the gather: the
    processes' terms cover every (i, j) of the global batch once. Each divides its sum by its own b rows; averaging
    over processes, as data-parallel training does with gradients, gives 1/|B| of the whole sum. (big_vision passes
    text chunks round the devices instead; the sum is the same.)
    """
    all_text_embeds = gather_with_grad(text_embeds)
    logits = logit_scale.exp() * image_embeds @ all_text_embeds.t() + logit_bias
    rows = image_embeds.shape[0]
    # z: -1 everywhere but this process's pairs, at columns [rank * b, (rank + 1) * b).
    signs = -torch.ones_like(logits)
    pairs = torch.arange(rows, device=logits.device)
    signs[pairs, pairs + process_rank() * rows] = 1.0
    return -F.logsigmoid(signs * logits).sum() / rows


def family_loss(model, image_embeds: torch.Tensor, text_embeds: torch.Tensor, learn_scalars: bool = True):
    """The loss of `model`'s family (`families.Family.loss`) on these features, with its learned temperature (and
    SigLIP's bias); `learn_scalars=False` detaches them (their gradient is let through once per step)."""

    def scalar(parameter: torch.Tensor) -> torch.Tensor:
        return parameter if learn_scalars else parameter.detach()

    if family_of(model.config).loss == "sigmoid":
        return sigmoid_loss(image_embeds, text_embeds, scalar(model.logit_scale), scalar(model.logit_bias))
    return contrastive_loss(image_embeds, text_embeds, scalar(model.logit_scale))
