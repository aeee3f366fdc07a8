"""A MODE as clip_benchmark's zero-shot classification scores models: an open_clip-style `encode_image` /
`encode_text` pair, routed on the task's whole class list first.

clip_benchmark (`clip_benchmark.metrics.zeroshot_classification.evaluate`) embeds each class's prompts with
`encode_text`, averages them, and scores `normalize(encode_image(images)) @ classes`. A MODE weighs its experts per
task, so the bridge routes once on the task (`for_task`: its class names and templates), then answers as one dual
encoder: each expert's normalised embedding times sqrt(w_k s_k / sum_j w_j s_j) (s_k the expert's logit scale),
concatenated, so that an image's dot product with a class is the MODE's logit up to one positive factor (and for
SigLIP experts, a shift: sum_k w_k b_k is the same for every class), and the ranking, hence every accuracy, is
`eval/zeroshot.py`'s. clip_benchmark calls `encode_text` once per class with that
class's prompts; the bridge returns the class's embedding (the MODE's: each expert's prompt embeddings averaged, then
normalised) on every row, so clip_benchmark's own averaging leaves it as it is.

docs/evaluation.md scores a MODE with it in lines that run as written: `amp=False` in both of clip_benchmark's
calls (autocast's rounding would rank some images otherwise than `eval/zeroshot.py`'s float32), and the logits scored
by `scoring.classification_metrics` (clip_benchmark 1.6's `evaluate` ends in an `accuracy` that NumPy 2.4 fails).
clip_benchmark's loaders carry one image tensor per batch: `pixel_batch` makes it, packing SigLIP 2's patch mask and
grid sizes beside its patches, which `encode_image` unpacks.
"""

import torch
from torch import nn

from .scoring import experts_of, family, logit_scales, text_padding, zero_shot_classifier

# SigLIP 2's images as one tensor [batch, patches, values + 3]: each patch's values, then its mask and the grid size.
PACKED_COLUMNS = 3


def pixel_batch(image_processor, images) -> torch.Tensor:
    """The images as the one tensor a clip_benchmark loader yields and `encode_image` takes: the image processor's
    `pixel_values`, and for SigLIP 2 its `pixel_attention_mask` and `spatial_shapes` packed beside each patch."""
    inputs = image_processor(images=images, return_tensors="pt")
    if "spatial_shapes" not in inputs:
        return inputs["pixel_values"]
    patches = inputs["pixel_values"].shape[1]
    mask = inputs["pixel_attention_mask"][..., None].to(inputs["pixel_values"].dtype)
    shapes = inputs["spatial_shapes"][:, None, :].expand(-1, patches, -1).to(inputs["pixel_values"].dtype)
    return torch.cat([inputs["pixel_values"], mask, shapes], dim=-1)


def unpacked(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """`pixel_batch`'s tensor of SigLIP 2 images as the inputs its model takes."""
    values, mask, shapes = pixels.split([pixels.shape[-1] - PACKED_COLUMNS, 1, 2], dim=-1)
    return {"pixel_values": values, "pixel_attention_mask": mask[..., 0].long(), "spatial_shapes": shapes[:, 0].long()}


class ClipBenchmarkMode(nn.Module):
    """A MODE (or a CLIPModel) routed for one task, with the `encode_image` / `encode_text` that clip_benchmark
    calls; `tokenize` is the tokenizer it takes."""

    def __init__(self, model, tokenizer, weights: torch.Tensor):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        scaled = weights * logit_scales(model)
        self.register_buffer("scales", (scaled / scaled.sum()).sqrt())  # [K]: sqrt(w_k s_k / sum_j w_j s_j)

    @classmethod
    @torch.inference_mode()
    def for_task(cls, model, tokenizer, classnames: list[str], templates: list[str], routing: str | None = None):
        """The bridge for the task of these class names in these templates: the MODE routed on it as
        `eval/zeroshot.py` routes (each class's router embeddings averaged over the templates)."""
        _, router_embeds = zero_shot_classifier(model, tokenizer, classnames, templates)
        if router_embeds is None:  # a CLIPModel: one expert of weight one
            weights = torch.ones(1)
        else:
            weights = model.route_embeddings(router_embeds, routing=routing).cpu()
        return cls(model, tokenizer, weights)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """clip_benchmark's tokenizer: the experts' token ids, padded. Their attention mask is kept for
        `encode_text`, which clip_benchmark gives the ids alone."""
        tokens = self.tokenizer(texts, truncation=True, return_tensors="pt", **text_padding(self.model))
        self.last_tokens = (tokens["input_ids"], tokens["attention_mask"])
        return tokens["input_ids"]

    def concatenated(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Each expert's features [N, d], normalised and scaled, side by side [N, K d]."""
        scaled = [scale * nn.functional.normalize(f.float(), dim=-1) for scale, f in zip(self.scales, features)]
        return torch.cat(scaled, dim=-1)

    @torch.inference_mode()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """A batch of `pixel_batch`'s images [N, ...] -> their embeddings."""
        pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        inputs = (
            unpacked(pixel_values) if family(self.model).model_type == "siglip2" else {"pixel_values": pixel_values}
        )
        return self.concatenated([e.get_image_features(**inputs).pooler_output for e in experts_of(self.model)])

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One class's prompts [T, L] -> its embedding on each of the T rows: each expert's embeddings of the prompts,
        normalised, averaged, normalised again (the MODE's class embedding), then scaled and concatenated."""
        ids, mask = getattr(self, "last_tokens", (None, None))
        attention_mask = mask.to(self.model.device) if ids is not None and torch.equal(ids, input_ids.cpu()) else None
        input_ids = input_ids.to(self.model.device)
        per_expert = [
            nn.functional.normalize(e.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
                                    .pooler_output.float(), dim=-1).mean(0, keepdim=True)
            for e in experts_of(self.model)
        ]  # fmt: skip
        return self.concatenated(per_expert).expand(len(input_ids), -1)
