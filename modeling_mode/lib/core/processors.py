"""Loading a model folder's tokenizer and processor as they were saved.

transformers 5.25 gives the folder of a `siglip2` model its `Siglip2Tokenizer` whatever class its
tokenizer_config.json names. The experts trained here from random weights keep a character-level `CLIPTokenizer`
(whatever their family), which a Siglip2Tokenizer reading the same vocabulary would pad on the other side and frame
with other special tokens: every tool that loads an expert's tokenizer loads it through here.
"""

import transformers
from transformers import AutoProcessor, AutoTokenizer
from transformers.utils import cached_file

from .files import read_json


def named_tokenizer_class(path: str) -> str | None:
    """The tokenizer class that `path`'s tokenizer_config.json names (a folder or Hub id), if any."""
    config_file = cached_file(path, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False)
    return read_json(config_file).get("tokenizer_class") if config_file else None


def as_saved(tokenizer, path: str):
    """`tokenizer`, or the one of the class `path` names when AutoTokenizer chose another."""
    named = named_tokenizer_class(path)
    if named and named != type(tokenizer).__name__ and hasattr(transformers, named):
        return getattr(transformers, named).from_pretrained(path)
    return tokenizer


def load_tokenizer(path: str, **kwargs):
    return as_saved(AutoTokenizer.from_pretrained(path, **kwargs), path)


def load_processor(path: str):
    """AutoProcessor's processor of `path` (or its tokenizer alone, where it saved no processor) with the tokenizer
    class it was saved with."""
    processor = AutoProcessor.from_pretrained(path)
    if hasattr(processor, "tokenizer"):
        processor.tokenizer = as_saved(processor.tokenizer, path)
        return processor
    return as_saved(processor, path)
