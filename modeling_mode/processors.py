"""A CLIP tokenizer and image processor made without downloads, for experts trained from scratch and for tests."""

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

try:  # transformers' default CLIPImageProcessor needs torchvision since the PIL one got its own name
    from transformers import CLIPImageProcessorPil
except ImportError:  # earlier 5.x releases: the default one is PIL-based
    from transformers import CLIPImageProcessor as CLIPImageProcessorPil

CHAR_VOCAB_SIZE = 2 + 2 * 256  # two special tokens, then every byte-level symbol alone and as a word end


def char_level_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer with the byte-level alphabet as its vocabulary and no merges: one token per character.

    `<|startoftext|>` is id 0 and `<|endoftext|>` (also padding) id 1: a CLIPTextConfig for it needs
    `bos_token_id=0, eos_token_id=1, pad_token_id=1` and `vocab_size >= CHAR_VOCAB_SIZE`.
    """
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [symbol + "</w>" for symbol in alphabet]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=model_max_length
    )


def pil_image_processor(image_size: int = 224) -> CLIPImageProcessorPil:
    """CLIP's resize, centre crop and normalisation, with PIL (transformers' default one needs torchvision)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
