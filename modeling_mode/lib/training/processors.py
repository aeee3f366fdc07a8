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


def char_level_clip_config(
    width: int, layers: int, heads: int, image_size: int, patch_size: int, context: int = 77, mlp_ratio: int = 4
) -> dict:
    """The CLIPConfig fields of a CLIP to train from scratch with `char_level_tokenizer`, both towers alike."""
    tower = dict(
        hidden_size=width, intermediate_size=mlp_ratio * width, num_hidden_layers=layers, num_attention_heads=heads
    )
    # The tokenizer's ids: 0 starts, 1 ends and pads; CLIP pools the text at the first end token.
    text = dict(
        tower,
        vocab_size=CHAR_VOCAB_SIZE,
        max_position_embeddings=context,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(tower, image_size=image_size, patch_size=patch_size)
    return dict(text_config=text, vision_config=vision, projection_dim=width)


def pil_image_processor(image_size: int = 224) -> CLIPImageProcessorPil:
    """CLIP's resize, centre crop and normalisation, with PIL (transformers' default one needs torchvision)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
