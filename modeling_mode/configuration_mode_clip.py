"""Configuration of a MODE ensemble: N CLIP data experts plus a centroid router."""

from transformers import CLIPConfig, CLIPTextConfig, PretrainedConfig

ROUTINGS = ("paper", "released", "uniform")
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
        router_text_config (`CLIPTextConfig` or `dict`, *optional*):
            Text tower (with projection) that embeds the task's metadata: the space the fine centroids live in.
            Defaults to the experts' text tower with their projection size.
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
    sub_configs = {"expert_config": CLIPConfig, "router_text_config": CLIPTextConfig}

    def __init__(
        self,
        expert_config=None,
        router_text_config=None,
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
            router_text_config = CLIPTextConfig(**router_text_config)
        if fine_to_coarse is None:
            fine_to_coarse = [i % num_experts for i in range(num_fine_clusters or num_experts)]
        fine_to_coarse = [int(i) for i in fine_to_coarse]
        if num_fine_clusters is None:
            num_fine_clusters = len(fine_to_coarse)

        self.expert_config = expert_config
        self.router_text_config = router_text_config
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
        """Size of the routing space: the router tower's projected text embedding, and each fine centroid."""
        return self.router_text_config.projection_dim

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
        if self.router_top_k is not None and not 1 <= self.router_top_k <= self.num_experts:
            raise ValueError(
                f"router_top_k must be None or in [1, num_experts={self.num_experts}], got {self.router_top_k}."
            )
        if self.router_lambda <= 0 or self.router_temperature <= 0:
            raise ValueError(
                f"router_lambda ({self.router_lambda}) and router_temperature ({self.router_temperature}) "
                "must be positive."
            )


ModeCLIPConfig.register_for_auto_class()

__all__ = ["ModeCLIPConfig", "text_tower_config"]
