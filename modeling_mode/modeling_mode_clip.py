"""MODE: an ensemble of data experts (CLIP, MetaCLIP 2, SigLIP or SigLIP 2 models) weighted by how close a task's
metadata is to each expert's clusters."""

import copy
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .adapters import ExpertAdaptedLinear, LoraExpert, adapted_layers, add_expert_adapters, set_adapters
from .configuration_mode_clip import ROUTINGS, ModeCLIPConfig, ModeSiglipConfig
from .families import family_of, text_tower_family
from .routing import keep_top_k, paper_log_weights, released_log_weights

# Config entries that name or date a checkpoint rather than describe its architecture.
_NON_ARCHITECTURE_KEYS = {"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype"}
# Given expert weights must sum to one within this: it lets through weights rounded to bfloat16 (each moves by at most
# 2**-8 of itself, so their sum by at most 0.4%) and refuses unnormalised ones such as [2, 6] or [0.5, 0.6].
WEIGHT_SUM_TOLERANCE = 1e-2


@dataclass
class ModeCLIPOutput(ModelOutput):
    r"""
    All logits are float32 whatever the model's dtype: the experts' logits are weighted and summed in float32, as
    the routing weights are computed.

    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        sum_k w_k * logits_k(image, text): the routed ensemble of the experts' logits, each in its family's form:
        exp(logit_scale_k) * cos_k for CLIP and MetaCLIP 2 (a softmax over the texts gives probabilities),
        exp(logit_scale_k) * cos_k + logit_bias_k for SigLIP and SigLIP 2 (a sigmoid of each gives one).
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
        The transpose of `logits_per_image`.
    expert_weights (`torch.FloatTensor` of shape `(num_experts,)`):
        The task's expert weights w_k (float32, non-negative, summing to one).
    expert_logits_per_image (`torch.FloatTensor` of shape `(num_experts, image_batch_size, text_batch_size)`):
        Each expert's own `logits_per_image`, returned only when `output_expert_logits=True`.
    """

    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    expert_weights: torch.FloatTensor | None = None
    expert_logits_per_image: torch.FloatTensor | None = None


class ModeCLIPModel(PreTrainedModel):
    """N data experts and a router that weights them per task (Ma et al., "MODE", CVPR 2024).

    The experts are `CLIPModel`s or `MetaClip2Model`s (`ModeSiglipModel` holds SigLIP ones), all of one architecture:
    full models in `experts`, or, for a MODE of LoRA experts (`config.lora_rank`), one shared `seed_model` whose
    adapted layers hold every expert's adapters (`adapters.py`). `expert(k)` is expert k either way.

    The router embeds the task's label prompts with `router_text_model`, the encoder of the space the fine cluster
    centroids live in, and turns their distances to `fine_centroids` into one weight per expert. It is the seed's
    text tower, which reads the experts' token ids, or a sentence encoder such as the clustering's (the paper's
    choice), which reads its own (`router_input_ids`, given by the MODE's tokenizer, `ModeCLIPTokenizer`). The
    ensemble's logits are the weighted sum of the experts' logits; experts with zero weight are not run.

    Routing runs in float32 whatever the dtype the model is loaded in (e.g. `dtype=torch.bfloat16`): the centroids
    are kept in float32 when loading, and the router's embeddings are cast to float32 before they are compared.
    """

    config_class = ModeCLIPConfig
    base_model_prefix = "mode_clip"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # The experts' own `_no_split_modules` are not collected through an nn.ModuleList: those of every family.
    _no_split_modules = [
        f"{prefix}{layer}"
        for prefix in ("CLIP", "MetaClip2", "Siglip", "Siglip2")
        for layer in ("TextEmbeddings", "EncoderLayer", "VisionEmbeddings")
    ] + ["SiglipMultiheadAttentionPoolingHead", "Siglip2MultiheadAttentionPoolingHead"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # The centroids are routing's reference points: a half-precision copy would move every class's distances.
    _keep_in_fp32_modules_strict = ["fine_centroids"]

    def __init__(self, config: ModeCLIPConfig):
        super().__init__(config)
        if config.lora_rank:
            self.seed_model = AutoModel.from_config(config.expert_config)
            add_expert_adapters(
                self.seed_model, config.lora_target_modules, config.num_experts, config.lora_rank, config.lora_scale
            )
        else:
            self.experts = nn.ModuleList(
                AutoModel.from_config(config.expert_config) for _ in range(config.num_experts)
            )
        self.router_text_model = router_from_config(config.router_text_config)
        # Persistent, so that the centroids travel in model.safetensors and load exactly.
        self.register_buffer("fine_centroids", torch.zeros(config.num_fine_clusters, config.router_embed_dim))
        # (key, weights) of the last routed task: the zero-shot pipeline calls forward once per image with the
        # same labels, and the weights depend on the labels only.
        self._last_route = None
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ModeCLIPModel):
            init.zeros_(module.fine_centroids)
        if isinstance(module, ExpertAdaptedLinear):  # zero adapters: every expert starts as the seed
            init.zeros_(module.lora_A)
            init.zeros_(module.lora_B)

    def expert(self, k: int):
        """Expert k, callable like its own model (`forward`, `get_text_features`, `get_image_features`, `config`,
        `logit_scale`, and for SigLIP `logit_bias`): a module of `experts`, or the shared seed with k's adapters."""
        if not 0 <= k < self.config.num_experts:
            raise IndexError(f"expert {k} of a MODE of {self.config.num_experts} experts.")
        return LoraExpert(self.seed_model, k) if self.config.lora_rank else self.experts[k]

    def expert_model(self, k: int) -> PreTrainedModel:
        """Expert k as a model of its own (e.g. to save or push alone): the module of `experts`, or for a LoRA MODE a
        copy of the seed with k's adapters merged into it, which costs one more model's memory."""
        expert = self.expert(k)
        return expert.merged() if isinstance(expert, LoraExpert) else expert

    def expert_adapters(self, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Expert k's adapters of a LoRA MODE: {layer path in the seed: (lora_A [rank, in], lora_B [out, rank])}."""
        return {name: (layer.lora_A[k], layer.lora_B[k]) for name, layer in adapted_layers(self.seed_model).items()}

    @classmethod
    def from_experts(
        cls,
        experts: list[PreTrainedModel],
        fine_centroids: torch.Tensor,
        fine_to_coarse: list[int],
        router_text_model: PreTrainedModel,
        **router_settings,
    ) -> "ModeCLIPModel":
        """Assemble a MODE from trained experts and the clustering's outputs, checking every shape and id.

        The experts are models of one family and architecture (`CLIPModel`, `MetaClip2Model`, `SiglipModel` or
        `Siglip2Model`); the MODE is a `ModeSiglipModel` for SigLIP ones, a `ModeCLIPModel` else. `router_settings`
        are `ModeCLIPConfig` routing options (`routing`, `router_lambda`, `router_top_k`, `router_temperature`). The
        modules are used as given, not copied.
        """
        experts = list(experts)
        if not experts:
            raise ValueError("from_experts needs at least one expert.")
        for i, expert in enumerate(experts):
            check_expert(expert, experts[0], f"expert {i}")
        model = cls._assembled(
            experts[0].config, router_text_model, fine_centroids, fine_to_coarse, len(experts), {}, **router_settings
        )
        model.experts = nn.ModuleList(experts)
        return model

    @classmethod
    def from_lora_experts(
        cls,
        seed_model: PreTrainedModel,
        adapters: list[dict[str, tuple[torch.Tensor, torch.Tensor]]],
        lora_settings: dict,
        fine_centroids: torch.Tensor,
        fine_to_coarse: list[int],
        router_text_model: PreTrainedModel,
        **router_settings,
    ) -> "ModeCLIPModel":
        """Assemble a MODE of LoRA experts: the seed they were all trained from, and each one's adapters
        ({layer path in the seed: (lora_A [rank, in], lora_B [out, rank])}, as PEFT trained them).

        `lora_settings` are `rank`, `alpha` and `target_modules`. The seed's weights are used as given, not copied;
        every expert must adapt exactly the layers the settings name, with matrices of their shapes.
        """
        check_expert(seed_model, seed_model, "the seed")
        if not adapters:
            raise ValueError("from_lora_experts needs at least one expert's adapters.")
        lora = {
            "lora_rank": lora_settings["rank"],
            "lora_alpha": lora_settings.get("alpha"),
            "lora_target_modules": list(lora_settings["target_modules"]),
        }
        model = cls._assembled(seed_model.config, router_text_model, fine_centroids, fine_to_coarse, len(adapters),
                               lora, **router_settings)  # fmt: skip
        add_expert_adapters(seed_model, model.config.lora_target_modules, len(adapters), model.config.lora_rank,
                            model.config.lora_scale)  # fmt: skip
        set_adapters(seed_model, [{name: tuple(map(torch.as_tensor, pair)) for name, pair in expert.items()}
                                  for expert in adapters])  # fmt: skip
        model.seed_model = seed_model
        return model

    @classmethod
    def _assembled(cls, expert_config, router_text_model, fine_centroids, fine_to_coarse, num_experts, lora,
                   **router_settings) -> "ModeCLIPModel":  # fmt: skip
        """A MODE on the meta device with the router and centroids in place, its experts still to be set."""
        if not isinstance(router_text_model, PreTrainedModel) or not isinstance(
            router_text_model, router_class(router_text_model.config)
        ):
            raise ValueError(
                f"router_text_model is a {type(router_text_model).__name__}: give the seed's text tower with its "
                "projection (e.g. CLIPTextModelWithProjection, SiglipTextModel) or a sentence encoder loaded with "
                "AutoModel."
            )
        centroids = torch.as_tensor(fine_centroids).detach().float()
        if not torch.isfinite(centroids).all():
            raise ValueError("fine_centroids contain NaN or infinite values.")
        config = ModeCLIPConfig.for_experts(
            copy.deepcopy(expert_config),
            router_text_config=copy.deepcopy(router_text_model.config),
            num_experts=num_experts,
            num_fine_clusters=centroids.shape[0] if centroids.ndim == 2 else 0,
            fine_to_coarse=list(fine_to_coarse),
            **lora,
            **router_settings,
        )
        if centroids.ndim != 2 or centroids.shape[1] != config.router_embed_dim:
            raise ValueError(
                f"fine_centroids must have shape [num_fine_clusters, {config.router_embed_dim}] (the router text "
                f"model's embedding size), got {list(centroids.shape)}."
            )
        with torch.device("meta"):  # skip initialising weights that are replaced right away
            model = MODE_MODELS[config.model_type](config)
        model.router_text_model = router_text_model
        model.fine_centroids = centroids.to(router_text_model.device)
        return model

    @torch.no_grad()
    def route(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        routing: str | None = None,
        router_input_ids: torch.Tensor | None = None,
        router_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 expert weights [num_experts] for ONE task, whose label prompts are all the rows of `input_ids`
        (`model.route(**tokenizer(prompts, padding=True, return_tensors="pt"))`). A router with its own tokenizer
        reads `router_input_ids`, which the MODE's tokenizer gives beside the experts' ids."""
        router_ids = (router_input_ids, router_attention_mask)
        input_ids, attention_mask = self.router_inputs(input_ids, attention_mask, *router_ids)
        if input_ids is None or input_ids.shape[0] == 0:
            raise ValueError("route() needs the task's label prompts: got an empty label list.")
        mask = attention_mask.cpu().numpy().tobytes() if attention_mask is not None else b""
        tokens = (input_ids.cpu().numpy().tobytes(), input_ids.shape, mask)
        key = (tokens, self._routing_settings(routing), self._router_state())
        if self._last_route is None or self._last_route[0] != key:
            self._last_route = (key, self.route_embeddings(self.embed_task(input_ids, attention_mask), routing))
        return self._last_route[1].clone()

    @torch.no_grad()
    def embed_task(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The router's embeddings [n_texts, router_embed_dim] of texts tokenized for it, pooled as
        `config.router_pooling` says (not normalised: `route_embeddings` does that)."""
        outputs = self.router_text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.router_pooling == "projection":
            return getattr(outputs, text_tower_family(self.config.router_text_config).text_embedding)
        if self.config.router_pooling == "pooler":
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        if self.config.router_pooling == "cls":
            return hidden[:, 0]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)

    @torch.no_grad()
    def route_embeddings(self, class_embeds: torch.Tensor, routing: str | None = None) -> torch.Tensor:
        """Float32 expert weights [num_experts] from a task's class embeddings [n_classes, router_embed_dim].

        Use it to route on embeddings prepared elsewhere, e.g. each class averaged over its prompt templates as the
        paper does. Embeddings are L2-normalised here, and compared with the centroids in float32 whatever the dtype
        of either. `routing` overrides `config.routing` for this call.
        """
        routing, router_lambda, top_k, temperature = self._routing_settings(routing)
        if class_embeds.ndim != 2 or class_embeds.shape[0] == 0:
            raise ValueError(f"route needs class embeddings [n_classes > 0, d], got {list(class_embeds.shape)}.")
        if class_embeds.shape[1] != self.config.router_embed_dim:
            raise ValueError(
                f"class embeddings have size {class_embeds.shape[1]}, the fine centroids "
                f"{self.config.router_embed_dim}."
            )
        num_experts = self.config.num_experts
        if routing == "uniform":
            return torch.full((num_experts,), 1.0 / num_experts, device=self.fine_centroids.device)
        class_embeds = nn.functional.normalize(class_embeds.float(), dim=-1).to(self.fine_centroids.device)
        # float(): a model cast as a whole (`model.half()`, `model.to(torch.bfloat16)`) casts the centroids too.
        centroids = self.fine_centroids.float()
        clusters = (centroids, torch.tensor(self.config.fine_to_coarse, device=centroids.device))
        if routing == "paper":
            log_weights = paper_log_weights(class_embeds, *clusters, num_experts, router_lambda)
        else:
            log_weights = released_log_weights(class_embeds, *clusters, num_experts, temperature)
        return keep_top_k(log_weights.softmax(dim=0), top_k)

    def router_inputs(
        self, input_ids, attention_mask=None, router_input_ids=None, router_attention_mask=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ids, mask) the router reads of a tokenizer's output: the experts' own, or those its own tokenizer made."""
        if not self.config.router_has_own_tokenizer:
            return input_ids, attention_mask
        if router_input_ids is None:
            raise ValueError(
                f"this MODE routes with its own text encoder ({self.config.router_text_config.model_type}), which "
                "reads router_input_ids: tokenize with the MODE's tokenizer or processor (AutoTokenizer or "
                "AutoProcessor.from_pretrained(..., trust_remote_code=True)), which give them; or pass expert_weights."
            )
        return router_input_ids, router_attention_mask

    def _router_state(self) -> tuple:
        # Identity and in-place version of every tensor routing reads: a change to any of them (new centroids,
        # loaded router weights) invalidates the remembered weights.
        tensors = (self.fine_centroids, *self.router_text_model.parameters())
        return tuple((id(tensor), tensor._version) for tensor in tensors)

    def _routing_settings(self, routing: str | None) -> tuple:
        routing = routing or self.config.routing
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}.")
        config = self.config
        return routing, config.router_lambda, config.router_top_k, config.router_temperature

    def _check_weights(self, expert_weights: torch.Tensor) -> torch.Tensor:
        """The weights as float32, after checking they are a distribution over the experts (sum within 1e-2 of 1)."""
        expert_weights = torch.as_tensor(expert_weights, dtype=torch.float32)
        if expert_weights.shape != (self.config.num_experts,):
            raise ValueError(
                f"expert_weights must have shape [{self.config.num_experts}], got {list(expert_weights.shape)}."
            )
        if not torch.isfinite(expert_weights).all() or (expert_weights < 0).any():
            raise ValueError(f"expert_weights must be finite and non-negative, got {expert_weights.tolist()}.")
        total = expert_weights.sum().item()
        if abs(total - 1) > WEIGHT_SUM_TOLERANCE:
            raise ValueError(
                f"expert_weights must sum to one (within {WEIGHT_SUM_TOLERANCE}), got {expert_weights.tolist()} "
                f"summing to {total:.4g}: divide them by their sum."
            )
        return expert_weights

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        expert_weights: torch.Tensor | None = None,
        output_expert_logits: bool = False,
        router_input_ids: torch.LongTensor | None = None,
        router_attention_mask: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.LongTensor | None = None,
    ) -> ModeCLIPOutput:
        r"""
        Both `input_ids` (the label prompts or captions) and `pixel_values` are needed; for text alone use `route()`
        (the weights) or `get_text_features()`, for images alone `get_image_features()`.

        expert_weights (`torch.Tensor` of shape `(num_experts,)`, *optional*):
            Weights to use instead of routing on `input_ids` (which are then taken to be the task's label prompts):
            non-negative and summing to one (within 1e-2).
        output_expert_logits (`bool`, *optional*, defaults to `False`):
            Run every expert, also those of zero weight, and return each one's `logits_per_image`.
        router_input_ids, router_attention_mask (`torch.Tensor`, *optional*):
            The same texts tokenized for a router with its own tokenizer (`config.router_has_own_tokenizer`): the
            MODE's tokenizer and processor return them beside `input_ids`.
        pixel_attention_mask, spatial_shapes (`torch.Tensor`, *optional*):
            SigLIP 2's patch mask and grid sizes, as its image processor gives them beside `pixel_values`.
        """
        missing = [name for name, value in (("input_ids", input_ids), ("pixel_values", pixel_values)) if value is None]
        if missing:
            raise ValueError(
                "forward needs input_ids (the tokenized label prompts or captions) and pixel_values (the images, from "
                f"the image processor), got no {' and no '.join(missing)}. For text alone use route() (the expert "
                "weights) or get_text_features(), for images alone get_image_features()."
            )
        if expert_weights is None:
            router_ids = {"router_input_ids": router_input_ids, "router_attention_mask": router_attention_mask}
            expert_weights = self.route(input_ids, attention_mask, **router_ids)
        expert_weights = self._check_weights(expert_weights)
        run = range(self.config.num_experts) if output_expert_logits else expert_weights.nonzero()[:, 0].tolist()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs |= image_inputs(pixel_values, pixel_attention_mask, spatial_shapes)
        expert_logits = {k: self.expert(k)(**inputs).logits_per_image.float() for k in run}
        logits_per_image = sum(
            expert_weights[k].item() * logits for k, logits in expert_logits.items() if expert_weights[k] > 0
        )
        return ModeCLIPOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            expert_weights=expert_weights,
            expert_logits_per_image=torch.stack(list(expert_logits.values())) if output_expert_logits else None,
        )

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        expert_weights: torch.Tensor | None = None,
        router_input_ids: torch.Tensor | None = None,
        router_attention_mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """Each expert's L2-normalised text embedding times sqrt(w_k), concatenated, as `pooler_output`.

        With the same weights on both sides, image . text = sum_k w_k cos_k: a routed MODE is one dual encoder.
        `expert_weights` (non-negative, summing to one within 1e-2) defaults to uniform. The router's ids, which the
        MODE's tokenizer gives beside the experts' (`model.get_text_features(**tokenizer(...))`), are not read: the
        weights are given, not routed.
        """
        return self._weighted_features(
            lambda expert: expert.get_text_features(input_ids=input_ids, attention_mask=attention_mask),
            expert_weights,
        )

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        expert_weights: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.LongTensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """Image counterpart of `get_text_features`: sqrt(w_k)-scaled normalised embeddings, concatenated."""
        inputs = image_inputs(pixel_values, pixel_attention_mask, spatial_shapes)
        return self._weighted_features(lambda expert: expert.get_image_features(**inputs), expert_weights)

    def _weighted_features(self, embed, expert_weights) -> BaseModelOutputWithPooling:
        num_experts = self.config.num_experts
        if expert_weights is None:
            expert_weights = torch.full((num_experts,), 1.0 / num_experts)
        expert_weights = self._check_weights(expert_weights)
        blocks = {
            k: nn.functional.normalize(embed(self.expert(k)).pooler_output, dim=-1) * weight**0.5
            for k, weight in enumerate(expert_weights.tolist())
            if weight > 0
        }
        # Experts of zero weight are not run: a block of zeros keeps the layout [batch, num_experts * dim] fixed.
        first = next(iter(blocks.values()))
        features = [blocks[k].to(first.device) if k in blocks else torch.zeros_like(first) for k in range(num_experts)]
        return BaseModelOutputWithPooling(pooler_output=torch.cat(features, dim=-1))


def image_inputs(pixel_values, pixel_attention_mask=None, spatial_shapes=None) -> dict:
    """The image inputs an expert takes: `pixel_values`, and SigLIP 2's patch mask and grid sizes where given."""
    inputs = {
        "pixel_values": pixel_values,
        "pixel_attention_mask": pixel_attention_mask,
        "spatial_shapes": spatial_shapes,
    }
    return {name: value for name, value in inputs.items() if value is not None}


def router_class(config) -> type:
    """The router's class: a family's text tower with its projection (`CLIPTextModelWithProjection`,
    `SiglipTextModel`, ...), or for any other encoder the class `AutoModel` builds."""
    family = text_tower_family(config)
    if family is not None:
        return getattr(transformers, family.text_tower)
    return AutoModel._model_mapping[type(config)]


def router_from_config(config) -> PreTrainedModel:
    """The router module: the seed's text tower with its projection, or any sentence encoder `AutoModel` builds."""
    return router_class(config)._from_config(config)


def check_expert(expert, first, what: str) -> None:
    """An expert must be a model of a MODE family with the architecture of `first`."""
    if not isinstance(expert, PreTrainedModel):
        raise ValueError(f"{what} is a {type(expert).__name__}, not a transformers model.")
    family = family_of(expert.config)
    if not isinstance(expert, AutoModel._model_mapping[type(expert.config)]):
        raise ValueError(
            f"{what} is a {type(expert).__name__}: give the dual encoder of its {family.title} checkpoint, as "
            "AutoModel loads it."
        )
    if _architecture(expert.config) != _architecture(first.config):
        raise ValueError(f"{what} has a different config from expert 0: all experts must share one.")


def _architecture(config) -> dict:
    """A config as a dict without the entries that only name or date the checkpoint."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, dict):
        return {k: _architecture(v) for k, v in config.items() if k not in _NON_ARCHITECTURE_KEYS}
    return config


class ModeSiglipModel(ModeCLIPModel):
    """A MODE of SigLIP or SigLIP 2 experts: logits `sum_k w_k (exp(s_k) cos_k + b_k)`, each an independent sigmoid's
    (the zero-shot pipeline, seeing "siglip" in the model type, gives sigmoid scores and pads texts as SigLIP's)."""

    config_class = ModeSiglipConfig
    base_model_prefix = "mode_siglip"


# Every MODE model class by its config's model type.
MODE_MODELS = {model_class.config_class.model_type: model_class for model_class in (ModeCLIPModel, ModeSiglipModel)}

ModeCLIPModel.register_for_auto_class("AutoModel")
ModeSiglipModel.register_for_auto_class("AutoModel")

__all__ = ["ModeCLIPModel", "ModeCLIPOutput", "ModeSiglipModel"]
