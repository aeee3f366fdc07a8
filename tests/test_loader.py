"""The training loader's pixels: uint8 crops from the workers, normalised on the device as the image processor would;
JPEGs much larger than the crop decoded at a reduced size; captions padded to a fixed length for compiled models."""

import io
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import CLIPProcessor

from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.data.pairs import (
    PairCollator,
    PairTransform,
    crop_box,
    read_image,
    reduced_decoding,
    resized_crop,
)
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.batches import TrainingData
from modeling_mode.lib.training.processors import char_level_tokenizer, pil_image_processor

CROP = 32


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def photo_like(width: int, height: int, seed: int, orientation: int | None = None) -> bytes:
    """A JPEG with broad colour fields and finer texture (a photo's spectrum more than noise's)."""
    rng = np.random.default_rng(seed)
    bicubic = PILImage.Resampling.BICUBIC
    fields = PILImage.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height), bicubic)
    texture = PILImage.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    image = PILImage.blend(fields, texture.resize((width, height), bicubic), 0.5)
    exif = PILImage.Exif()
    if orientation is not None:
        exif[PILImage.ExifTags.Base.Orientation] = orientation
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=90, exif=exif)
    return jpeg.getvalue()


def clip_processor() -> CLIPProcessor:
    return CLIPProcessor(image_processor=pil_image_processor(CROP), tokenizer=char_level_tokenizer())


def pair(image: bytes, caption: str = "a pair") -> dict:
    return {"image": {"bytes": image, "path": None}, "caption": caption}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    """A saved dataset of JPEGs of varied sizes, some much larger than the crop."""
    sizes = [(40, 30), (64, 64), (300, 200), (35, 90), (150, 180), (48, 40), (260, 270), (33, 33)]
    images = [{"bytes": photo_like(w, h, seed), "path": None} for seed, (w, h) in enumerate(sizes)]
    columns = {"image": images, "caption": [f"pair {i}" for i in range(len(sizes))]}
    folder = tmp_path_factory.mktemp("loader") / "pairs"
    Dataset.from_dict(columns, features=Features({"image": Image(), "caption": Value("string")})).save_to_disk(folder)
    return str(folder)


def test_workers_hand_over_uint8_crops_that_the_device_normalises_as_the_image_processor(pairs):
    processor = clip_processor()
    args = ExpertTrainingArguments(pairs, "-", 2, batch_size=4, num_workers=0, report_to="none")
    data = TrainingData(args, Accelerator(cpu=True))
    batches = data.micro_batches(processor, 16, start_step=0)
    batch = next(batches)
    crops = batch["pixel_values"]
    assert crops.dtype == torch.uint8 and crops.shape == (4, 3, CROP, CROP)
    moved = data.to_device(batch)
    images = [PILImage.fromarray(crop.permute(1, 2, 0).numpy()) for crop in crops]
    expected = processor.image_processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")
    expected = expected.pixel_values
    assert moved["pixel_values"].dtype == torch.float32
    # The processor rescales in float64 and normalises in float32, the device in float32 throughout: the two differ
    # by float32 rounding (measured: at most 4.8e-7 on values up to about 2.1).
    torch.testing.assert_close(moved["pixel_values"], expected, rtol=0, atol=1e-6)
    assert torch.equal(moved["input_ids"], batch["input_ids"])


@pytest.mark.parametrize("orientation", [None, 6])
def test_a_large_jpeg_is_decoded_at_reduced_size_into_nearly_the_full_size_crop(orientation):
    jpeg = photo_like(1600, 1200, seed=1, orientation=orientation)
    transform, size = PairTransform(pil_image_processor(224), "image", "caption"), (224, 224)
    crop, caption = transform(pair(jpeg), random.Random(7), "row 0")
    assert crop.dtype == torch.uint8 and crop.shape == (3, 224, 224) and caption == "a pair"

    full = read_image(pair(jpeg)["image"], "image", "row 0")  # turned upright: 1200 x 1600 with orientation 6
    assert full.size == ((1600, 1200) if orientation is None else (1200, 1600))
    box = crop_box(*full.size, random.Random(7))  # what the transform drew
    reduction = reduced_decoding(PILImage.open(io.BytesIO(jpeg)), box, size)
    assert reduction == 4  # the crop is over 4 x 224 pixels on each side, not 8 x
    reduced_box = [round(edge / reduction) * reduction for edge in box]  # the box on the reduced decode's pixels
    reference = resized_crop(full, reduced_box, size)
    # libjpeg's reduced decode averages blocks of pixels where the full-size path filters with a bicubic kernel, so the
    # crops are not equal: measured, 0.5 levels apart on average here (at most 3), 0.6 to 1.5 on grainier images.
    difference = (crop.int() - reference.int()).abs().float()
    assert difference.mean() < 2.0, difference.mean()


def test_a_crop_is_decoded_at_full_size_unless_it_keeps_the_output_resolution():
    image = PILImage.open(io.BytesIO(photo_like(1000, 1000, seed=2)))
    assert reduced_decoding(image, (0, 0, 447, 900), (224, 224)) == 1  # 447 < 2 x 224: the crop would be upsampled
    assert reduced_decoding(image, (0, 0, 100, 900), (224, 224)) == 1  # upsampled even at full size
    image = PILImage.open(io.BytesIO(photo_like(1000, 1000, seed=2)))
    assert reduced_decoding(image, (0, 0, 448, 900), (224, 224)) == 2
    assert image.size == (500, 500)
    png = io.BytesIO()
    PILImage.new("RGB", (1000, 1000)).save(png, format="PNG")
    assert reduced_decoding(PILImage.open(png), (0, 0, 1000, 1000), (224, 224)) == 1  # only JPEGs decode reduced


def test_a_truncated_large_jpeg_is_refused_naming_its_row():
    jpeg = photo_like(1600, 1200, seed=3)
    transform = PairTransform(pil_image_processor(224), "image", "caption")
    with pytest.raises(InputError, match=r"^--dataset row 3: column 'image' holds an unreadable image \(.*truncated"):
        transform(pair(jpeg[: len(jpeg) // 2]), random.Random(0), "row 3")
    with pytest.raises(InputError, match=r"^--dataset row 4: column 'image' holds bytes PIL cannot read as an image"):
        transform(pair(b"not an image"), random.Random(0), "row 4")


def test_captions_are_padded_to_the_longest_or_to_max_length_for_a_compiled_model():
    crops = [torch.zeros(3, 2, 2, dtype=torch.uint8)] * 2
    captions = ["a dog", "a cat on a mat"]
    tokenizer = char_level_tokenizer()
    longest = PairCollator(tokenizer, 40)(list(zip(crops, captions)))
    fixed = PairCollator(tokenizer, 40, pad_to_max_length=True)(list(zip(crops, captions)))
    assert longest["input_ids"].shape == (2, len(tokenizer(captions[1])["input_ids"]))
    assert fixed["input_ids"].shape == fixed["attention_mask"].shape == (2, 40)
    assert torch.equal(fixed["input_ids"][:, : longest["input_ids"].shape[1]], longest["input_ids"])
    assert fixed["pixel_values"].dtype == torch.uint8


def test_a_streamed_run_with_workers_reads_each_epoch_anew_and_resumes_where_it_stood(pairs):
    """Each epoch's loader has workers of its own, which start from the epoch's seed."""
    args = ExpertTrainingArguments(pairs, "-", 100, streaming=True, shuffle_buffer=4, batch_size=2, num_workers=2)
    processor = clip_processor()

    def read(position, count):
        data = TrainingData(args, Accelerator(cpu=True))
        batches = data.micro_batches(processor, 16, 0, position)
        return [next(batches) for _ in range(count)], data

    # 8 pairs, in 2 workers' shards of 4 pairs: 4 batches an epoch.
    uninterrupted, data = read((0, 0), 8)
    assert data.stream_position == (1, 4)
    assert all(batch["pixel_values"].dtype == torch.uint8 for batch in uninterrupted)  # as the workers gave them
    epochs = [torch.cat([b["input_ids"] for b in uninterrupted[e * 4 : e * 4 + 4]]) for e in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    resumed, _ = read((0, 3), 5)
    for got, expected in zip(resumed, uninterrupted[3:]):
        assert all(torch.equal(got[name], expected[name]) for name in expected)
