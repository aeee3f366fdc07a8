"""The dual-encoder families a MODE's experts can belong to, and what differs between them.

Every expert of one MODE is of one family: CLIP (`CLIPModel`), MetaCLIP 2 (`MetaClip2Model`), SigLIP (`SiglipModel`)
or SigLIP 2 (`Siglip2Model`). They differ in their loss and logits (CLIP's softmax over the batch of
`exp(s) * cos`; SigLIP's independent sigmoid of `exp(s) * cos + b`), in how their text tower gives its embedding, and
in how texts are padded (SigLIP's text tower pools its last position, so its texts are padded to the full context).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One family of dual encoders, named by its config's `model_type`."""

    model_type: str  # the experts' config model_type: "clip", "metaclip_2", "siglip", "siglip2"
    title: str  # as people write it
    loss: str  # "softmax": CLIP's contrastive loss; "sigmoid": SigLIP's pairwise sigmoid loss with a learned bias
    text_tower: str  # the transformers class of the text tower with its projection: the router of a seed-text MODE
    text_embedding: str  # the text tower's output field holding its projected embedding
    padding: str  # how its texts are padded: "longest", or "max_length" where the last position is pooled

    @property
    def text_model_type(self) -> str:
        return f"{self.model_type}_text_model"

    @property
    def has_logit_bias(self) -> bool:
        return self.loss == "sigmoid"


FAMILIES = {
    family.model_type: family
    for family in (
        Family("clip", "CLIP", "softmax", "CLIPTextModelWithProjection", "text_embeds", "longest"),
        Family("metaclip_2", "MetaCLIP 2", "softmax", "MetaClip2TextModelWithProjection", "text_embeds", "longest"),
        Family("siglip", "SigLIP", "sigmoid", "SiglipTextModel", "pooler_output", "max_length"),
        Family("siglip2", "SigLIP 2", "sigmoid", "Siglip2TextModel", "pooler_output", "max_length"),
    )
}
TEXT_TOWER_FAMILIES = {family.text_model_type: family for family in FAMILIES.values()}


def supported_families() -> str:
    return ", ".join(f"{family.title} ({name})" for name, family in FAMILIES.items())


def family_of(config) -> Family:
    """The family of an expert's config (or of its `model_type`); a ValueError naming the supported ones else."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"{model_type!r} models are not a MODE expert family: the supported families are {supported_families()}."
        )
    return FAMILIES[model_type]


def text_tower_family(config) -> Family | None:
    """The family whose text tower `config` is (a router that reads the experts' own token ids), or None."""
    return TEXT_TOWER_FAMILIES.get(getattr(config, "model_type", None))


def text_tower_config(expert_config):
    """The config of an expert's text tower with its projection: the router of a MODE routing in the seed's text space.

    CLIP and MetaCLIP 2 keep the projection's size on the outer config; SigLIP's text config already holds its head's.
    """
    text_config = expert_config.text_config
    if hasattr(expert_config, "projection_dim"):
        return type(text_config)(**{**text_config.to_dict(), "projection_dim": expert_config.projection_dim})
    return type(text_config)(**text_config.to_dict())


def text_embed_dim(text_tower_config) -> int:
    """The size of a text tower's projected embedding."""
    return getattr(text_tower_config, "projection_dim", None) or text_tower_config.projection_size


__all__ = ["FAMILIES", "Family", "family_of", "supported_families", "text_embed_dim", "text_tower_config"]
