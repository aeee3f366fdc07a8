"""Data loader throughput per worker: pairs/s of this project's training loader against open_clip's, on JPEGs.

Each side reads the same webdataset shards of generated JPEGs (square, `--sizes` px; photo-like: smooth colour fields,
texture and a little noise, quality 90) and captions, and gives batches of random resized 224 px crops
(scale 0.9-1, bicubic) with tokenised captions (CLIP's BPE, 77 tokens), as one DataLoader worker does, here in this
process (a DataLoader without workers, torch on one thread as in a worker):

- ours: `PlainStream`, the dataset of `train/expert.py --streaming` on data files, with `PairTransform` and
  `PairCollator`: uint8 crops, which `PixelNormalizer` turns into float pixels later, on the training device.
- before: the same loader with the transform this project had before: the image decoded at full size, PIL's resize,
  float32 normalisation in the worker.
- open_clip: open_clip_train's own `get_wds_dataset` (webdataset, torchvision's RandomResizedCrop, ToTensor and
  Normalize, its tokenizer), with its `batch_size` and no workers.

Each round reads every shard once per side, the sides taking turns batch by batch (the order reversed every other
round), so that load from other programs hits all alike; medians over the rounds are reported.

open_clip_torch needs torchvision, which does not install beside the CPU torch of the main environment, so this runs
in its own virtual environment (as `bench_train.py`):

    python -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/benchvenv/bin/pip install transformers==5.24.0 accelerate==1.15.0 datasets==5.2.0 open_clip_torch==3.3.0
    /tmp/benchvenv/bin/pip install webdataset==0.2.86  # open_clip_train's pin (its extra `training`)
    /tmp/benchvenv/bin/pip install --no-deps -e .
    nice -n 10 /tmp/benchvenv/bin/python benchmarks/bench_loader.py --pairs 1024 --rounds 5
"""

import argparse
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import open_clip
import torch
from open_clip_train.data import get_wds_dataset
from PIL import Image
from torch.utils.data import DataLoader
from transformers import CLIPTokenizer

from modeling_mode.lib.core.files import write_json
from modeling_mode.lib.data.data_files import list_data_files
from modeling_mode.lib.data.pairs import PairCollator, PairTransform, crop_box, pick_caption, read_image
from modeling_mode.lib.training.processors import pil_image_processor
from modeling_mode.lib.training.streams import PlainStream

CROP, CONTEXT, SHARDS = 224, 77, 4


def photo_like_jpeg(size: int, rng: np.random.Generator) -> bytes:
    """A size x size JPEG with a photo's spectrum more than noise's: broad colour fields, finer texture, grain."""
    fields = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    texture = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    texture = Image.fromarray(texture).resize((size, size), Image.BILINEAR)
    grain = rng.integers(-6, 7, (size, size, 3))
    pixels = np.asarray(Image.blend(fields, texture, 0.3)).astype(np.int16) + grain
    jpeg = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(jpeg, format="JPEG", quality=90)
    return jpeg.getvalue()


def write_shards(folder: str, size: int, pairs: int) -> list[str]:
    """`pairs` JPEG-caption pairs in SHARDS webdataset tar files (key.jpg, key.txt)."""
    rng = np.random.default_rng(size)
    words = ["a", "photo", "of", "the", "dog", "cat", "on", "beach", "red", "car", "in", "snow", "at", "night"]
    paths = []
    for shard in range(SHARDS):
        paths.append(os.path.join(folder, f"{shard:05d}.tar"))
        with tarfile.open(paths[-1], "w") as tar:
            for index in range(shard, pairs, SHARDS):
                caption = " ".join(rng.choice(words, size=rng.integers(4, 16)))
                for suffix, data in (("jpg", photo_like_jpeg(size, rng)), ("txt", caption.encode())):
                    member = tarfile.TarInfo(f"{index:06d}.{suffix}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return paths


def clip_tokenizer(model_max_length: int = CONTEXT) -> CLIPTokenizer:
    """CLIP's BPE tokenizer as transformers' CLIPTokenizer, from the vocabulary that open_clip ships (no download)."""
    theirs = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(token, token): index for token, index in theirs.encoder.items()}
    merges = [pair for pair, _ in sorted(theirs.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


class BeforeTransform(PairTransform):
    """The transform before uint8 crops: the image decoded at full size, the crop resized by PIL, and the pixels
    normalised to float32 in the worker."""

    def __init__(self, image_processor, image_column: str, caption_column: str):
        super().__init__(image_processor, image_column, caption_column)
        self.rescale = image_processor.rescale_factor
        self.mean = np.asarray(image_processor.image_mean, dtype=np.float32)
        self.std = np.asarray(image_processor.image_std, dtype=np.float32)

    def __call__(self, example: dict, rng, where: str) -> tuple[torch.Tensor, str]:
        image = read_image(example[self.image_column], self.image_column, where)
        box = crop_box(*image.size, rng)
        crop = image.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC, box=box)
        pixels = (np.asarray(crop, dtype=np.float32) * self.rescale - self.mean) / self.std
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), pick_caption(example[self.caption_column], rng)


def project_loader(transform_class, folder: str, batch_size: int, shuffle_buffer: int):
    """A reader of one epoch of the shards through the project's streamed loader, with the given transform."""
    transform = transform_class(pil_image_processor(CROP), "jpg", "txt")
    collator = PairCollator(clip_tokenizer(), CONTEXT)
    flags = SimpleNamespace(seed=0, shuffle_buffer=shuffle_buffer, batch_size=batch_size, num_workers=0,
                            image_column="jpg", caption_column="txt", cluster_id=None)  # fmt: skip
    stream = PlainStream(flags, list_data_files(folder), process_index=0, num_processes=1)
    stream.transform = transform
    return lambda: DataLoader(stream, batch_size=batch_size, drop_last=True, collate_fn=collator, num_workers=0)


def open_clip_loader(paths: list[str], pairs: int, batch_size: int):
    """A reader of one epoch of the shards through open_clip's training loader, without workers."""
    args = SimpleNamespace(
        train_data=f"{os.path.dirname(paths[0])}/{{00000..{len(paths) - 1:05d}}}.tar",
        train_num_samples=pairs,
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=batch_size,
        workers=0,
        world_size=1,
    )
    preprocess = open_clip.image_transform(CROP, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    return lambda: get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer).dataloader


def timed(seconds: dict, name: str, function, *args):
    """function(*args), its time added to seconds[name]."""
    start = time.perf_counter()
    result = function(*args)
    seconds[name] += time.perf_counter() - start
    return result


def epoch_rates(loaders: dict, order: list[str]) -> dict[str, float]:
    """Pairs/s of each loader over one epoch, the loaders taking turns batch by batch (in `order`)."""
    seconds, pairs = dict.fromkeys(loaders, 0.0), dict.fromkeys(loaders, 0)
    batches = {name: timed(seconds, name, lambda make: iter(make()), loaders[name]) for name in order}
    while batches:
        for name in [name for name in order if name in batches]:
            batch = timed(seconds, name, next, batches[name], None)
            if batch is None:
                del batches[name]
            else:
                pairs[name] += len(batch[1] if isinstance(batch, (list, tuple)) else batch["input_ids"])
    return {name: pairs[name] / seconds[name] for name in loaders}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="JPEG sides, px")
    parser.add_argument("--pairs", type=int, default=1024, help="pairs per size (a multiple of --batch-size)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per side, after one warm-up epoch")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="of our stream (open_clip's: 1000 first)")
    parser.add_argument("--output", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    results = {"torch": torch.__version__, "pillow": Image.__version__, "crop": CROP, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            folder = os.path.join(root, str(size))
            os.makedirs(folder)
            paths = write_shards(folder, size, args.pairs)
            loaders = {
                "ours": project_loader(PairTransform, folder, args.batch_size, args.shuffle_buffer),
                "before": project_loader(BeforeTransform, folder, args.batch_size, args.shuffle_buffer),
                "open_clip": open_clip_loader(paths, args.pairs, args.batch_size),
            }
            epoch_rates(loaders, list(loaders))  # warm-up: imports, file cache, datasets' stream setup
            rounds = [epoch_rates(loaders, list(loaders)[:: 1 if i % 2 == 0 else -1]) for i in range(args.rounds)]
            medians = {name: statistics.median(rates[name] for rates in rounds) for name in loaders}
            results[f"{size}px"] = {
                "pairs_per_second_per_worker": medians,
                "ours_vs_before": medians["ours"] / medians["before"],
                "ours_vs_open_clip": medians["ours"] / medians["open_clip"],
            }
            print(json.dumps({f"{size}px": results[f"{size}px"]}, indent=2), flush=True)
    if args.output:
        write_json(args.output, results)


if __name__ == "__main__":
    main()
