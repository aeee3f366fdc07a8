"""Configuration of a MODE ensemble: N CLIP data experts plus a centroid router."""

from transformers import AutoConfig, CLIPConfig, CLIPTextConfig, PretrainedConfig

ROUTINGS = ("paper", "released", "uniform")
# How the router turns its encoder's output into one embedding per text: CLIP's projected text embedding (a seed CLIP's
# text tower), or a sentence encoder's last hidden states pooled by masked mean (sentence-transformers' MiniLM), first
# token, or BERT's pooler (SimCSE). The clustering's caption embeddings are made the same way
# (`lib.clustering.embedding`).
ROUTER_POOLINGS = ("projection", "mean", "cls", "pooler")
CLIP_TEXT_MODEL_TYPE = "clip_text_model"
# `register_for_auto_class` records one auto class per object; the zero-shot pipeline needs its own entry.
AUTO_MAP = {
    "AutoConfig": "configuration_mode_clip.ModeCLIPConfig",
    "AutoModel": "modeling_mode_clip.ModeCLIPModel",
    "AutoModelForZeroShotImageClassification": "modeling_mode_clip.ModeCLIPModel",
}


def text_tower_config(clip_config: CLIPConfig) -> CLIPTextConfig:
    """Config of a CLIP model's text tower with its projection, as a `CLIPTextModelWithProjection`.

    This is the router of a MODE whose centroids live in the seed CLIP's text space.
    """
    return CLIPTextConfig(**{**clip_config.text_config.to_dict(), "projection_dim": clip_config.projection_dim})


class ModeCLIPConfig(PretrainedConfig):
    r"""
    Configuration of [`ModeCLIPModel`].

    Args:
        expert_config (`CLIPConfig` or `dict`, *optional*):
            Architecture shared by every expert.
        router_text_config (`PretrainedConfig` or `dict`, *optional*):
            Text encoder that embeds the task's metadata: the space the fine centroids live in. A `CLIPTextConfig`
            (the seed CLIP's text tower with its projection: the experts' tokenizer feeds it), or the config of any
            `AutoModel` sentence encoder, e.g. the clustering's (the paper routes in the clustering encoder's space;
            its own tokenizer feeds it: `ModeCLIPTokenizer`). Defaults to the experts' text tower.
        router_pooling (`str`, *optional*):
            One of `ROUTER_POOLINGS`: `"projection"` for a CLIP text tower (the default there), `"mean"` (the default
            for other encoders), `"cls"` or `"pooler"`.
        num_experts (`int`, *optional*, defaults to 2):
            Number of data experts, i.e. coarse clusters.
        num_fine_clusters (`int`, *optional*):
            Number of fine clusters m. Defaults to `len(fine_to_coarse)`.
        fine_to_coarse (`list[int]`, *optional*):
            Expert id of each fine cluster. Defaults to a round-robin map.
        routing (`str`, *optional*, defaults to `"paper"`):
            How expert weights follow from the task: `"paper"` (Eq. 4-6 of Ma et al., 2024), `"released"` (the
            authors' released ensembling code) or `"uniform"`.
        router_lambda (`float`, *optional*, defaults to 0.2):
            Kernel width lambda of the paper's formula.
        router_top_k (`int`, *optional*):
            Keep only the k highest-weighted experts (renormalised). `None` keeps all.
        router_temperature (`float`, *optional*, defaults to 8.0):
            Softmax temperature of the released formula.
    """

    model_type = "mode_clip"
    sub_configs = {"expert_config": CLIPConfig, "router_text_config": AutoConfig}

    def __init__(
        self,
        expert_config=None,
        router_text_config=None,
        router_pooling=None,
        num_experts=2,
        num_fine_clusters=None,
        fine_to_coarse=None,
        routing="paper",
        router_lambda=0.2,
        router_top_k=None,
        router_temperature=8.0,
        **kwargs,
    ):
        if expert_config is None:
            expert_config = CLIPConfig()
        elif isinstance(expert_config, dict):
            expert_config = CLIPConfig(**expert_config)
        if router_text_config is None:
            router_text_config = text_tower_config(expert_config)
        elif isinstance(router_text_config, dict):
            router_text_config = router_config_from_dict(router_text_config)
        if router_pooling is None:
            router_pooling = "projection" if router_text_config.model_type == CLIP_TEXT_MODEL_TYPE else "mean"
        if fine_to_coarse is None:
            fine_to_coarse = [i % num_experts for i in range(num_fine_clusters or num_experts)]
        fine_to_coarse = [int(i) for i in fine_to_coarse]
        if num_fine_clusters is None:
            num_fine_clusters = len(fine_to_coarse)

        self.expert_config = expert_config
        self.router_text_config = router_text_config
        self.router_pooling = router_pooling
        self.num_experts = num_experts
        self.num_fine_clusters = num_fine_clusters
        self.fine_to_coarse = fine_to_coarse
        self.routing = routing
        self.router_lambda = router_lambda
        self.router_top_k = router_top_k
        self.router_temperature = router_temperature
        self._check()
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)

    @property
    def router_embed_dim(self) -> int:
        """Size of the routing space: the router's text embedding (CLIP's projection, or a sentence encoder's hidden
        size), and each fine centroid."""
        if self.router_pooling == "projection":
            return self.router_text_config.projection_dim
        return self.router_text_config.hidden_size

    @property
    def router_has_own_tokenizer(self) -> bool:
        """Whether the router reads other token ids than the experts (`router_input_ids`): any router but a CLIP text
        tower, whose ids are the experts'."""
        return self.router_text_config.model_type != CLIP_TEXT_MODEL_TYPE

    def _check(self):
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}.")
        if len(self.fine_to_coarse) != self.num_fine_clusters:
            raise ValueError(
                f"fine_to_coarse has {len(self.fine_to_coarse)} entries but num_fine_clusters is "
                f"{self.num_fine_clusters}: it needs one expert id per fine cluster."
            )
        bad = [i for i in self.fine_to_coarse if not 0 <= i < self.num_experts]
        if bad:
            raise ValueError(
                f"fine_to_coarse holds expert ids {sorted(set(bad))} outside [0, num_experts={self.num_experts})."
            )
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}.")
        is_clip = self.router_text_config.model_type == CLIP_TEXT_MODEL_TYPE
        if self.router_pooling not in ROUTER_POOLINGS or is_clip != (self.router_pooling == "projection"):
            raise ValueError(
                f"router_pooling {self.router_pooling!r} does not fit a {self.router_text_config.model_type!r} "
                "router: 'projection' is for a CLIP text tower, 'mean', 'cls' or 'pooler' for other encoders."
            )
        if self.router_top_k is not None and not 1 <= self.router_top_k <= self.num_experts:
            raise ValueError(
                f"router_top_k must be None or in [1, num_experts={self.num_experts}], got {self.router_top_k}."
            )
        if self.router_lambda <= 0 or self.router_temperature <= 0:
            raise ValueError(
                f"router_lambda ({self.router_lambda}) and router_temperature ({self.router_temperature}) "
                "must be positive."
            )


def router_config_from_dict(config: dict) -> PretrainedConfig:
    """A router's config from its dict (as saved in config.json): its `model_type` says which config class; a dict
    without one is a CLIP text tower's (MODEs saved before other routers existed)."""
    model_type = config.get("model_type", CLIP_TEXT_MODEL_TYPE)
    return AutoConfig.for_model(model_type, **{key: value for key, value in config.items() if key != "model_type"})


ModeCLIPConfig.register_for_auto_class()

__all__ = ["ModeCLIPConfig", "text_tower_config"]
