"""The tokenizer of a MODE whose router has its own text encoder: the experts' CLIP ids and the router's, in one call.

The paper routes in the clustering encoder's space (a sentence encoder such as SimCSE or MiniLM), whose tokenizer is
not the experts'. `ModeCLIPTokenizer` is the experts' `CLIPTokenizer` with the router's tokenizer beside it (saved in
the subfolder `router_tokenizer/`): calling it on texts gives `input_ids` and `attention_mask` for the experts and
`router_input_ids` and `router_attention_mask` for the router, which `ModeCLIPModel.forward` takes. So the zero-shot
pipeline, `CLIPProcessor` and `model(**tokenizer(texts), pixel_values=...)` route with nothing more from the user.
Experts of other families have other tokenizers: MetaCLIP 2's XLM-R one (`ModeXLMRobertaTokenizer`), SigLIP 2's
Gemma one (`ModeGemmaTokenizer`, `ModeSiglip2Tokenizer`); `routed_tokenizer` picks the class for the experts' own.
"""

import os
import tempfile

from transformers import AutoTokenizer, CLIPTokenizer, GemmaTokenizer, Siglip2Tokenizer, XLMRobertaTokenizer

ROUTER_TOKENIZER = "router_tokenizer"  # its subfolder, beside the experts' tokenizer files


class RouterTokenizerMixin:
    """The experts' tokenizer (the class this mixes into) that also tokenizes every text for the router
    (`router_tokenizer`)."""

    def __init__(self, *args, router_tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.router_tokenizer = router_tokenizer

    @classmethod
    def from_experts_tokenizer(cls, experts_tokenizer, router_tokenizer):
        """The experts' tokenizer (its very files: vocabulary, merges, special tokens) with the router's beside it,
        e.g. the clustering encoder's AutoTokenizer."""
        with tempfile.TemporaryDirectory() as folder:
            experts_tokenizer.save_pretrained(folder)
            tokenizer = super().from_pretrained(folder)
        tokenizer.router_tokenizer = router_tokenizer
        return tokenizer

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        tokenizer = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        subfolder = "/".join(part for part in (kwargs.pop("subfolder", None), ROUTER_TOKENIZER) if part)
        kwargs.pop("trust_remote_code", None)  # the router's tokenizer is a library one
        tokenizer.router_tokenizer = AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path, *args, subfolder=subfolder, **kwargs
        )
        return tokenizer

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        router_files = self.router_tokenizer.save_pretrained(os.path.join(save_directory, ROUTER_TOKENIZER))
        return tuple(files) + tuple(router_files)

    def __call__(self, text=None, *args, **kwargs):
        encoding = super().__call__(text, *args, **kwargs)
        if text is None or self.router_tokenizer is None:
            return encoding
        routed = self.router_tokenizer(
            text,
            # Any padding asked for the experts' ids (SigLIP's: to its full context) is the batch's longest here.
            padding=bool(kwargs.get("padding", False)),
            truncation=True,  # the router's own limit, not the experts' max_length
            return_tensors=kwargs.get("return_tensors"),
        )
        encoding["router_input_ids"] = routed["input_ids"]
        encoding["router_attention_mask"] = routed["attention_mask"]
        return encoding


class ModeCLIPTokenizer(RouterTokenizerMixin, CLIPTokenizer):
    """CLIP's tokenizer (also that of experts trained from random weights here) with the router's beside it."""


class ModeXLMRobertaTokenizer(RouterTokenizerMixin, XLMRobertaTokenizer):
    """MetaCLIP 2's tokenizer with the router's beside it."""


class ModeGemmaTokenizer(RouterTokenizerMixin, GemmaTokenizer):
    """The Gemma tokenizer of SigLIP 2 checkpoints, with the router's beside it."""


class ModeSiglip2Tokenizer(RouterTokenizerMixin, Siglip2Tokenizer):
    """SigLIP 2's own tokenizer class, with the router's beside it."""


# The experts' tokenizer class: the MODE tokenizer class of it. Most derived first (a Siglip2Tokenizer is a Gemma one).
ROUTED_TOKENIZERS = {
    Siglip2Tokenizer: ModeSiglip2Tokenizer,
    GemmaTokenizer: ModeGemmaTokenizer,
    XLMRobertaTokenizer: ModeXLMRobertaTokenizer,
    CLIPTokenizer: ModeCLIPTokenizer,
}


def routed_tokenizer(experts_tokenizer, router_tokenizer) -> RouterTokenizerMixin:
    """The experts' tokenizer with the router's beside it, as the MODE tokenizer class of the experts' own."""
    for experts_class, routed_class in ROUTED_TOKENIZERS.items():
        if isinstance(experts_tokenizer, experts_class):
            return routed_class.from_experts_tokenizer(experts_tokenizer, router_tokenizer)
    raise ValueError(
        f"the experts' tokenizer is a {type(experts_tokenizer).__name__}: a MODE whose router has its own tokenizer "
        f"pairs it with one of {', '.join(klass.__name__ for klass in ROUTED_TOKENIZERS)} (SigLIP's sentencepiece "
        "tokenizer is not one: route such a MODE with the seed's text tower)."
    )


for _routed_class in ROUTED_TOKENIZERS.values():
    _routed_class.register_for_auto_class("AutoTokenizer")

__all__ = [
    "ModeCLIPTokenizer",
    "ModeGemmaTokenizer",
    "ModeSiglip2Tokenizer",
    "ModeXLMRobertaTokenizer",
    "routed_tokenizer",
]
