"""Configuration of a MODE ensemble: N data experts of one family (CLIP, MetaCLIP 2, SigLIP, SigLIP 2) plus a centroid
router."""

from transformers import AutoConfig, CLIPConfig, PretrainedConfig, SiglipConfig

from .families import family_of, text_embed_dim, text_tower_config, text_tower_family

ROUTINGS = ("paper", "released", "uniform")
# How the router turns its encoder's output into one embedding per text: CLIP's projected text embedding (a seed CLIP's
# text tower), or a sentence encoder's last hidden states pooled by masked mean (sentence-transformers' MiniLM), first
# token, or BERT's pooler (SimCSE). The clustering's caption embeddings are made the same way
# (`lib.clustering.embedding`).
ROUTER_POOLINGS = ("projection", "mean", "cls", "pooler")
# The layers LoRA experts adapt by default: every attention and MLP linear of both towers' encoder layers, named alike
# in the four families.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def auto_map(config_class: str, model_class: str) -> dict:
    """`register_for_auto_class` records one auto class per object; the zero-shot pipeline needs its own entry."""
    return {
        "AutoConfig": f"configuration_mode_clip.{config_class}",
        "AutoModel": f"modeling_mode_clip.{model_class}",
        "AutoModelForZeroShotImageClassification": f"modeling_mode_clip.{model_class}",
    }


class ModeCLIPConfig(PretrainedConfig):
    r"""
    Configuration of [`ModeCLIPModel`].

    Args:
        expert_config (`PretrainedConfig` or `dict`, *optional*):
            Architecture shared by every expert: the config of a `CLIPModel` or `MetaClip2Model` (this class), or of
            a `SiglipModel` or `Siglip2Model` ([`ModeSiglipConfig`]). The MODE's family is its `model_type`.
        router_text_config (`PretrainedConfig` or `dict`, *optional*):
            Text encoder that embeds the task's metadata: the space the fine centroids live in. The text tower of
            the experts' family with its projection (the seed's: the experts' tokenizer feeds it), or the config of any
            `AutoModel` sentence encoder, e.g. the clustering's (the paper routes in the clustering encoder's space;
            its own tokenizer feeds it: `ModeCLIPTokenizer`). Defaults to the experts' text tower.
        router_pooling (`str`, *optional*):
            One of `ROUTER_POOLINGS`: `"projection"` for a dual encoder's text tower (the default there), `"mean"`
            (the default for other encoders), `"cls"` or `"pooler"`.
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
        lora_rank (`int`, *optional*):
            The experts are low-rank adapters (LoRA) of one shared seed of this rank: the MODE stores the seed once
            and each expert's adapters. `None`: every expert is a full model.
        lora_alpha (`float`, *optional*):
            The adapters' scale is `lora_alpha / lora_rank`. Defaults to the rank (a scale of 1).
        lora_target_modules (`list[str]`, *optional*):
            Names of the seed's linear layers the adapters change (the last part of their module path). Defaults
            to `LORA_TARGET_MODULES`, every attention and MLP linear of both towers.
    """

    model_type = "mode_clip"
    sub_configs = {"expert_config": AutoConfig, "router_text_config": AutoConfig}
    # The experts' losses this MODE type ensembles: CLIP's and MetaCLIP 2's softmax logits. SigLIP's sigmoid ones are
    # `ModeSiglipConfig`'s, whose model type names SigLIP, so that the zero-shot pipeline gives sigmoid scores.
    expert_losses = ("softmax",)

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
        lora_rank=None,
        lora_alpha=None,
        lora_target_modules=None,
        **kwargs,
    ):
        if expert_config is None:
            expert_config = self.default_expert_config()
        elif isinstance(expert_config, dict):
            expert_config = config_from_dict(expert_config, default_model_type="clip")
        if router_text_config is None:
            router_text_config = text_tower_config(expert_config)
        elif isinstance(router_text_config, dict):
            router_text_config = config_from_dict(router_text_config, default_model_type="clip_text_model")
        if router_pooling is None:
            router_pooling = "projection" if text_tower_family(router_text_config) else "mean"
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
        self.lora_rank = lora_rank
        self.lora_alpha = lora_rank if lora_alpha is None else lora_alpha
        self.lora_target_modules = list(lora_target_modules or LORA_TARGET_MODULES) if lora_rank else None
        self._check()
        own_map = auto_map(type(self).__name__, type(self).__name__.replace("Config", "Model"))
        kwargs["auto_map"] = {**own_map, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)

    @classmethod
    def default_expert_config(cls):
        return CLIPConfig()

    @classmethod
    def for_experts(cls, expert_config, **kwargs) -> "ModeCLIPConfig":
        """The config of a MODE of experts with `expert_config`, of the MODE type their family's loss calls for."""
        loss = family_of(expert_config).loss
        config_class = next(klass for klass in MODE_CONFIGS.values() if loss in klass.expert_losses)
        return config_class(expert_config=expert_config, **kwargs)

    @property
    def expert_family(self):
        """The experts' `Family` (`families.FAMILIES`): their loss, logits and text padding."""
        return family_of(self.expert_config)

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    @property
    def router_embed_dim(self) -> int:
        """Size of the routing space: the router's text embedding (CLIP's projection, or a sentence encoder's hidden
        size), and each fine centroid."""
        if self.router_pooling == "projection":
            return text_embed_dim(self.router_text_config)
        return self.router_text_config.hidden_size

    @property
    def router_has_own_tokenizer(self) -> bool:
        """Whether the router reads other token ids than the experts (`router_input_ids`): any router but a text tower
        of the experts' family, whose ids are the experts'."""
        return text_tower_family(self.router_text_config) != self.expert_family

    def _check(self):
        family = family_of(self.expert_config)  # a ValueError naming the supported families
        if family.loss not in self.expert_losses:
            raise ValueError(
                f"{family.title} experts ({family.loss} logits) do not go in a {type(self).__name__}: use "
                "ModeCLIPConfig.for_experts(expert_config, ...), which picks the MODE type of their family."
            )
        if self.lora_rank is not None and (self.lora_rank < 1 or self.lora_alpha <= 0):
            raise ValueError(
                f"lora_rank must be None or >= 1, and lora_alpha positive: got {self.lora_rank}, {self.lora_alpha}."
            )
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
        is_tower = text_tower_family(self.router_text_config) is not None
        if self.router_pooling not in ROUTER_POOLINGS or is_tower != (self.router_pooling == "projection"):
            raise ValueError(
                f"router_pooling {self.router_pooling!r} does not fit a {self.router_text_config.model_type!r} "
                "router: 'projection' is for a dual encoder's text tower, 'mean', 'cls' or 'pooler' for other "
                "encoders."
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


def config_from_dict(config: dict, default_model_type: str) -> PretrainedConfig:
    """A sub-config from its dict (as saved in config.json): its `model_type` says which config class; a dict without
    one is of `default_model_type` (MODEs saved before other families and routers existed: CLIP's)."""
    model_type = config.get("model_type", default_model_type)
    return AutoConfig.for_model(model_type, **{key: value for key, value in config.items() if key != "model_type"})


class ModeSiglipConfig(ModeCLIPConfig):
    r"""
    Configuration of [`ModeSiglipModel`]: a MODE of SigLIP or SigLIP 2 experts, whose logits are
    `exp(s_k) * cos_k + b_k`, each an independent sigmoid's. Its arguments are [`ModeCLIPConfig`]'s.
    """

    model_type = "mode_siglip"
    expert_losses = ("sigmoid",)

    def __init__(self, **kwargs):  # transformers would give a config subclass an `__init__` of its own, not this one's
        super().__init__(**kwargs)

    @classmethod
    def default_expert_config(cls):
        return SiglipConfig()


# Every MODE config class by its model type.
MODE_CONFIGS = {config_class.model_type: config_class for config_class in (ModeCLIPConfig, ModeSiglipConfig)}

ModeCLIPConfig.register_for_auto_class()
ModeSiglipConfig.register_for_auto_class()

__all__ = ["LORA_TARGET_MODULES", "MODE_CONFIGS", "ModeCLIPConfig", "ModeSiglipConfig", "text_tower_config"]
