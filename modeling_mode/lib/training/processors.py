"""A tokenizer and image processors made without downloads, for experts of any family trained from scratch and for
tests."""

from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPProcessor,
    CLIPTokenizer,
    Siglip2ImageProcessorPil,
    Siglip2Processor,
    SiglipImageProcessorPil,
    SiglipProcessor,
)

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


def char_level_config(
    family: str,
    width: int,
    layers: int,
    heads: int,
    image_size: int,
    patch_size: int,
    context: int = 77,
    mlp_ratio: int = 4,
) -> dict:
    """The config fields of a `family` expert (clip, metaclip_2, siglip, siglip2) to train from scratch with
    `char_level_tokenizer`: CLIP's fields for CLIP and MetaCLIP 2 (the same towers); SigLIP's text tower holds its
    head's size (`projection_size`), and SigLIP 2's vision tower takes a number of patches instead of an image size.
    SigLIP's pad id (1, the tokenizer's end token) is in the vocabulary: its texts are padded to the full context."""
    fields = char_level_clip_config(width, layers, heads, image_size, patch_size, context, mlp_ratio)
    if not family.startswith("siglip"):
        return fields
    text, vision = fields["text_config"], fields["vision_config"]
    text["projection_size"] = fields.pop("projection_dim")
    if family == "siglip2":
        vision["num_patches"] = (vision.pop("image_size") // patch_size) ** 2
    return fields


def random_start_image_processor(family: str, image_size: int, patch_size: int):
    """The PIL image processor of a `family` expert trained from scratch (transformers' default ones need
    torchvision): CLIP's resize and centre crop; SigLIP's resize to the square; SigLIP 2's aspect-keeping resize into
    at most the vision tower's number of patches."""
    if family == "siglip":
        return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    if family == "siglip2":
        return Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=(image_size // patch_size) ** 2)
    return pil_image_processor(image_size)


def random_start_processor(family: str, image_processor, tokenizer: CLIPTokenizer):
    """The processor AutoProcessor loads back for `family`, holding the character-level CLIPTokenizer (SigLIP's
    processors take any tokenizer class: they call it with the padding the caller asks for)."""
    processor_class = {"siglip": SiglipProcessor, "siglip2": Siglip2Processor}.get(family, CLIPProcessor)
    return processor_class(image_processor=image_processor, tokenizer=tokenizer)
