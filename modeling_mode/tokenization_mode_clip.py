"""The tokenizer of a MODE whose router has its own text encoder: the experts' CLIP ids and the router's, in one call.

The paper routes in the clustering encoder's space (a sentence encoder such as SimCSE or MiniLM), whose tokenizer is
not CLIP's. `ModeCLIPTokenizer` is the experts' `CLIPTokenizer` with the router's tokenizer beside it (saved in the
subfolder `router_tokenizer/`): calling it on texts gives `input_ids` and `attention_mask` for the experts and
`router_input_ids` and `router_attention_mask` for the router, which `ModeCLIPModel.forward` takes. So the zero-shot
pipeline, `CLIPProcessor` and `model(**tokenizer(texts), pixel_values=...)` route with nothing more from the user.
"""

import os
import tempfile

from transformers import AutoTokenizer, CLIPTokenizer

ROUTER_TOKENIZER = "router_tokenizer"  # its subfolder, beside the experts' tokenizer files


class ModeCLIPTokenizer(CLIPTokenizer):
    """A `CLIPTokenizer` (the experts') that also tokenizes every text for the router (`router_tokenizer`)."""

    def __init__(self, *args, router_tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.router_tokenizer = router_tokenizer

    @classmethod
    def from_clip_tokenizer(cls, clip_tokenizer: CLIPTokenizer, router_tokenizer) -> "ModeCLIPTokenizer":
        """The experts' tokenizer (its very files: vocabulary, merges, special tokens) with the router's beside it,
        e.g. the clustering encoder's AutoTokenizer."""
        with tempfile.TemporaryDirectory() as folder:
            clip_tokenizer.save_pretrained(folder)
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
            padding=kwargs.get("padding", False),
            truncation=True,  # the router's own limit, not the experts' max_length
            return_tensors=kwargs.get("return_tensors"),
        )
        encoding["router_input_ids"] = routed["input_ids"]
        encoding["router_attention_mask"] = routed["attention_mask"]
        return encoding


ModeCLIPTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["ModeCLIPTokenizer"]
