"""The offline corpus' captions: words measured from the pixels, the class name kept in every caption."""

import collections

import numpy as np
from PIL import Image

from modeling_mode.lib.data.offline_corpus import SOURCES, caption_pairs, image_attributes


def picture(box: tuple[int, int, int, int], value: int = 255, background: int = 0, size: int = 28) -> Image.Image:
    """A `size`-square grey image of `background` with the rectangle `box` (top, left, bottom, right) of `value`."""
    pixels = np.full((size, size), background, dtype=np.uint8)
    top, left, bottom, right = box
    pixels[top:bottom, left:right] = value
    return Image.fromarray(pixels).convert("RGB")


def test_attributes_are_measured_from_the_foreground():
    assert image_attributes(picture((2, 2, 8, 8))) == [
        "tiny",
        "near the top on the left",
        "squarish",
        "filled",
        "bright",
    ]
    # A tall dark-grey bar in the middle of a white image (easy-VQA's background is white).
    assert image_attributes(picture((3, 10, 25, 19), value=60, background=255)) == [
        "small",
        "in the centre",
        "tall",
        "filled",
        "dark",
    ]
    hollow = np.asarray(picture((2, 2, 26, 26)))
    hollow = Image.fromarray(np.where(np.asarray(picture((4, 4, 24, 24))) > 0, 0, hollow).astype(np.uint8))
    assert image_attributes(hollow)[0] == "large" and image_attributes(hollow)[3] == "thin lines"
    assert image_attributes(picture((0, 0, 0, 0))) == ["blank"]


def test_attribute_captions_keep_the_class_name_and_are_rarely_duplicates():
    digits = SOURCES["mnist"]("train", count=1000, seed=0)
    plain = caption_pairs([digits], noise=0.0, seed=0)
    described = caption_pairs([digits], noise=0.0, seed=0, attributes=True)
    assert described["label"] == plain["label"]  # same pairs, same order: only the captions differ
    for caption, label in zip(described["caption"], described["label"]):
        assert label in caption
    # Templates alone give a few dozen strings for 1000 digits; with the measured words most captions are unique.
    assert len(set(plain["caption"])) <= 60
    counts = collections.Counter(described["caption"])
    assert sum(count == 1 for count in counts.values()) >= 0.8 * len(described)
