"""CLIP's contrastive loss over the global batch, with features gathered across processes and gradients kept."""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
from torch.nn import functional as F

# A gather whose backward sends each process its rows' gradients; renamed in torch 2.13, the old name warns there.
_all_gather = getattr(collectives, "all_gather_single_autograd", None) or collectives.all_gather_tensor_autograd


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Every process's rows, concatenated in rank order, with gradients flowing back through the gather."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return features
    return _all_gather(features.contiguous(), gather_dim=0, group=dist.group.WORLD)


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of this process's pairs against the whole global batch (local rows x all columns).

    `image_embeds` and `text_embeds` are this process's L2-normalised features [b, d] (every process holds the same
    b); `logit_scale` is the log temperature. Each process averages over its own rows; averaging that over processes,
    as data-parallel training does with gradients, gives the loss and gradient of the full global batch.
    """
    all_image_embeds = gather_with_grad(image_embeds)
    all_text_embeds = gather_with_grad(text_embeds)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeds @ all_text_embeds.t()
    logits_per_text = scale * text_embeds @ all_image_embeds.t()
    # This process's pairs sit at rows [rank * b, (rank + 1) * b) of the gathered batch.
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
