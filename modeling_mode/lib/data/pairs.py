"""Image-caption pairs for expert training: loading, the cluster filter, CLIP's augmentation and reproducible batches.

Random-access data (a `save_to_disk` directory or a downloaded Hub dataset) is read in an order that is a pure
function of the seed and the optimizer step: the global batch of step s is the same whatever the number of processes
or of accumulation micro-batches, and a resumed run reads exactly what an uninterrupted one would. Each pair's
caption choice and crop are drawn from a generator seeded by (seed, epoch, row), so workers and restarts agree too.

The loader's workers hand over uint8 crops; `PixelNormalizer` turns them into the model's float pixels on the device,
and for SigLIP 2 `PatchSequences` into its patch sequences.
"""

import io
import json
import math
import os
import random
import zlib
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetDict, IterableDataset, LargeList, List, Value, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from datasets.utils.file_utils import is_local_path
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..core.checks import naming_failures
from ..core.errors import InputError
from .data_files import (
    DATA_EXTENSIONS,
    alternatives,
    caption_of,
    column_types,
    columns_of,
    first_present,
    hub_data_files,
    json_field,
    list_data_files,
    pattern_files,
    read_samples,
)

# Coarse id of the pairs without a usable caption (the clustering's -1, and any a training run finds): no run,
# seed or expert, trains on them.
NO_CLUSTER = -1
TEXT_DTYPES = ("string", "large_string")
IMAGE_DECODER = ImageFeature()  # decodes {"bytes", "path"} values: the pairs are read undecoded, see `read_image`
CROP_SCALE = (0.9, 1.0)  # open_clip's RandomResizedCrop range: a mild random square crop, as CLIP trained with
CROP_RATIO = (3 / 4, 4 / 3)
ORIENTATION = ExifTags.Base.Orientation
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations turning the image a quarter: width and height swap


def load_pairs(
    source: str, split: str = "train", streaming: bool = False, columns: list[str] | None = None, caption_column=None
) -> Dataset | IterableDataset:
    """A `save_to_disk` directory, a Hub dataset id, or a folder of data files (parquet, webdataset .tar, ...).

    Local data files streamed are read by the project's own reader (`data_file_stream`), keeping only `columns`, the
    captions of `caption_column` checked to be text (training streams any data files, a Hub dataset's too, with
    `training.labelled.PlainStream`).
    Raises InputError naming the source for one that does not exist or cannot be loaded, a split it does not have,
    and (when not streaming) a split without rows.
    """
    if streaming and is_local_data_files(source):
        return data_file_stream(list_data_files(source, split), columns, caption_column)
    with naming_failures("--dataset", source):
        dataset = _load_split(source, split, streaming)
    if not streaming and len(dataset) == 0:
        raise InputError(f"--dataset {source!r} split {split!r} has no rows.")
    return dataset


def data_file_stream(files: list[str], columns: list[str] | None = None, caption_column=None) -> IterableDataset:
    """A stream of `files`' pairs (`columns` of them; all when None) read by `data_files.read_samples`, as clustering,
    resharding and --labels streams read them: a truncated or empty file, a key twice in a shard, a caption that is
    not text stop the run with the file and pair named (`datasets`' webdataset loader passes over the first three).
    One shard per file, so that processes and workers read their own files. Image bytes become the {"bytes", "path"}
    of the Image feature, a `txt` caption text, a `cls` member its integer."""
    columns = None if columns is None else tuple(columns)  # a list in gen_kwargs would be taken for shards
    kwargs = {"files": files, "columns": columns, "caption_column": caption_column}
    return IterableDataset.from_generator(decoded_samples, gen_kwargs=kwargs)


def decoded_samples(files: list[str], columns: tuple[str, ...] | None, caption_column: str | None):
    """Each pair of `files` as `data_file_stream` gives it: read by `read_samples`, its members decoded."""
    for file in files:
        for sample in read_samples(file, None if columns is None else list(columns)):
            where = f"pair {sample['__key__']!r} of data file {file!r}"
            absent = dict.fromkeys(columns or [])  # a member a sample lacks: None, as `datasets` gives it
            decoded = {name: caption_of(value, where) if name == caption_column else _decoded(name, value)
                       for name, value in sample.items()}  # fmt: skip
            yield absent | decoded | {"__url__": file}


def _decoded(name: str, value):
    """A tar member's bytes (or a parquet value) as `datasets`' webdataset loader gives it, but images undecoded."""
    if name == "__key__" or not isinstance(value, bytes):
        return value
    extension = name.rpartition(".")[2]
    if extension == "cls":
        return int(value)
    if extension in ("txt", "json") or json_field(name):
        text = value.decode("utf-8", errors="replace")
        try:
            return json.loads(text) if extension == "json" else text
        except ValueError:
            return text
    return {"bytes": value, "path": None}  # an image member: decoded later, when the transform opens it


def stream_columns(pairs: IterableDataset) -> list[str]:
    """The columns of a `datasets` stream: as declared, or its first pair's."""
    return pairs.column_names if pairs.column_names is not None else list(next(iter(pairs)).keys())


def streamed_data_files(source: str, split: str) -> list[str] | None:
    """The data files that a stream of `source` reads with the project's reader (`data_file_stream`): local ones, or
    a Hub dataset's parquet files or webdataset shards (hf:// URLs, at the commit resolved now). None for a saved
    dataset, or a Hub dataset of other files, which `datasets` streams."""
    if is_saved_dataset(source):
        return None
    if is_local_data_files(source):
        return list_data_files(source, split)
    with naming_failures("--dataset", source):
        files = hub_data_files(source, split)
    return files if files and all(file.endswith(DATA_EXTENSIONS) for file in files) else None


def is_local_data_files(source: str) -> bool:
    """Whether `source` names local data files: a file, a pattern, or a folder that is no `save_to_disk` one."""
    return pattern_files(source) is not None or (os.path.isdir(source) and not is_saved_dataset(source))


def is_saved_dataset(source: str) -> bool:
    """Whether `source` is a `save_to_disk` directory (else a Hub id or a folder of data files)."""
    return os.path.isdir(source) and any(
        os.path.exists(os.path.join(source, name)) for name in ("state.json", "dataset_dict.json")
    )


def _load_split(source: str, split: str, streaming: bool) -> Dataset | IterableDataset:
    if pattern_files(source) is not None:  # one data file, a shard pattern or a glob: the split 'train'
        files = list_data_files(source, split)
        builder = "webdataset" if files[0].endswith(".tar") else "parquet"
        return load_dataset(builder, data_files={split: files}, split=split, streaming=streaming)
    if not is_saved_dataset(source):
        return load_dataset(source, split=split, streaming=streaming)
    if _saved_without_rows(source):  # datasets itself fails on loading these, with an IndexError
        raise InputError(f"--dataset {source!r} split {split!r} has no rows.")
    dataset = load_from_disk(source)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise InputError(f"--dataset {source!r} has no split {split!r}; it has {list(dataset)}.")
        dataset = dataset[split]
    elif dataset.split is not None and str(dataset.split) != split:
        # A lone saved split knows its name; one saved without a name is the only split there is.
        raise InputError(f"--dataset {source!r} holds the split {str(dataset.split)!r}, not {split!r} (--split).")
    # Enough shards for every process and worker to read its own part.
    return dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 64))) if streaming else dataset


def _saved_without_rows(folder: str) -> bool:
    state = os.path.join(folder, "state.json")
    if not os.path.isfile(state):
        return False
    with open(state) as file:
        return not json.load(file)["_data_files"]


def check_columns(column_names, image_column: str, caption_column: str, cluster_column: str | None) -> None:
    """Raise an InputError naming any column the training needs but the dataset lacks (a column of alternatives,
    `jpg;png`, needs one of them)."""
    needed = {"--image-column": image_column, "--caption-column": caption_column}
    if cluster_column is not None:
        needed["--cluster-column"] = cluster_column
    missing = {flag: name for flag, name in needed.items() if not set(alternatives(name)) & set(column_names)}
    if not missing:
        return
    hint = ""
    if cluster_column in missing.values():
        hint = (
            " An expert needs the pairs' cluster ids: run the clustering step on this dataset first, "
            "or train the seed on all pairs with --cluster all."
        )
    names = ", ".join(f"{name!r} ({flag})" for flag, name in missing.items())
    raise InputError(f"The dataset has no column {names}; it has {sorted(column_names)}.{hint}")


def check_column_types(features, image_column: str, caption_column: str) -> None:
    """Raise an InputError for an image column that is not of images or a caption column that is not of text.

    `features` may be None (a stream that does not declare its types): its rows are then checked as they come.
    """
    if features is None:
        return
    caption = features[caption_column]
    text = caption.feature if isinstance(caption, (List, LargeList)) else caption
    if not (isinstance(text, Value) and text.dtype in TEXT_DTYPES):
        raise InputError(
            f"Column {caption_column!r} (--caption-column) holds {caption}, not captions: "
            "a string or a list of strings per pair."
        )
    for name in (name for name in alternatives(image_column) if name in features):
        if not isinstance(features[name], ImageFeature):
            raise InputError(f"Column {name!r} (--image-column) holds {features[name]}, not images.")


def check_data_file_columns(file: str, image_column: str, caption_column: str, cluster_column=None) -> None:
    """`check_columns` for a corpus of data files, from its first file alone (a corpus's files share their columns),
    and the type of its image column: a parquet file's schema, a tar shard's first sample (every member bytes). A
    caption that is not text is refused as it is read, naming its pair (`data_files.caption_of`)."""
    check_columns(columns_of(file), image_column, caption_column, cluster_column)
    types = column_types(file)
    for name in (name for name in alternatives(image_column) if name in types):
        if not is_image_type(types[name]):
            raise InputError(
                f"Column {name!r} (--image-column) of data file {file!r} holds {types[name]}, not images (bytes, or "
                "the struct of bytes and path that datasets' Image feature writes)."
            )


def is_image_type(arrow_type) -> bool:
    """Whether a parquet column of `arrow_type` holds images: their bytes, or datasets' {"bytes", "path"} struct."""
    if pa.types.is_struct(arrow_type):
        fields = {arrow_type.field(i).name: arrow_type.field(i).type for i in range(arrow_type.num_fields)}
        return "bytes" in fields and is_image_type(fields["bytes"])
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_null(arrow_type)


def usable_captions(value) -> list[str]:
    """The captions a pair can be trained on: its caption, or those of its list, that are non-blank strings."""
    captions = value if isinstance(value, (list, tuple)) else [value]
    return [caption for caption in captions if isinstance(caption, str) and caption.strip()]


def has_caption(value) -> bool:
    return bool(usable_captions(value))


def caption_mask(dataset: Dataset, caption_column: str, batch_size: int = 10_000) -> np.ndarray:
    """Whether each row has a usable caption, reading the caption column only (the images stay encoded)."""
    captions = dataset.select_columns([caption_column])
    return np.fromiter(
        (has_caption(value) for batch in captions.iter(batch_size) for value in batch[caption_column]),
        dtype=bool,
        count=len(dataset),
    )


def cluster_ids(dataset: Dataset, cluster_column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy")[cluster_column][:], dtype=np.int64)


def epoch_rows(
    coarse_ids: np.ndarray, cluster: int | None, out_of_cluster_ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """The rows one epoch trains on: the cluster's, plus `out_of_cluster_ratio` of the other clusters' pairs.

    `cluster=None` (the seed) takes every row but those without a caption (NO_CLUSTER). As in the authors' released
    loader, the out-of-cluster pairs are a fresh random sample each epoch, never pairs without a cluster.
    """
    if cluster is None:
        return np.flatnonzero(coarse_ids != NO_CLUSTER)
    inside = np.flatnonzero(coarse_ids == cluster)
    if len(inside) == 0:
        present = sorted(set(np.unique(coarse_ids).tolist()) - {NO_CLUSTER})
        raise InputError(f"Cluster {cluster} has no pairs: the dataset's clusters are {present}.")
    others = np.flatnonzero((coarse_ids != cluster) & (coarse_ids != NO_CLUSTER))
    extra = rng.choice(others, size=int(len(others) * out_of_cluster_ratio), replace=False)
    return np.concatenate([inside, extra])


class GlobalBatchSampler:
    """Batch sampler yielding this process's micro-batches, step after step, as lists of (row, epoch) keys.

    The global batch of a step holds `micro_batch_size * accumulation * num_processes` rows of the epoch's shuffled
    rows; process p reads its `accumulation` consecutive micro-batches at offset p. Epochs reshuffle (and redraw the
    out-of-cluster sample) with a generator seeded by (seed, epoch); the tail that fills no global batch is skipped.
    """

    def __init__(
        self,
        coarse_ids: np.ndarray,
        cluster: int | None,
        out_of_cluster_ratio: float,
        seed: int,
        micro_batch_size: int,
        accumulation: int,
        process_index: int,
        num_processes: int,
        start_step: int,
        max_steps: int,
    ):
        self.coarse_ids = coarse_ids
        self.cluster = cluster
        self.out_of_cluster_ratio = out_of_cluster_ratio
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation
        self.process_index = process_index
        self.global_batch_size = micro_batch_size * accumulation * num_processes
        self.start_step = start_step
        self.max_steps = max_steps
        self.rows_per_epoch = len(self.shuffled_rows(0))
        self.steps_per_epoch = self.rows_per_epoch // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise InputError(
                f"The training data has {self.rows_per_epoch} pairs, fewer than one global batch of "
                f"{self.global_batch_size} (batch size x gradient accumulation x processes)."
            )

    def shuffled_rows(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(epoch_rows(self.coarse_ids, self.cluster, self.out_of_cluster_ratio, rng))

    def __len__(self) -> int:
        return max(self.max_steps - self.start_step, 0) * self.accumulation

    def __iter__(self):
        epoch, rows = None, None
        for step in range(self.start_step, self.max_steps):
            step_epoch, position = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                epoch, rows = step_epoch, self.shuffled_rows(step_epoch)
            start = position * self.global_batch_size + self.process_index * self.accumulation * self.micro_batch_size
            for micro in range(self.accumulation):
                lo = start + micro * self.micro_batch_size
                yield [(int(row), epoch) for row in rows[lo : lo + self.micro_batch_size]]


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box of CROP_SCALE of the area and CROP_RATIO aspect."""
    for _ in range(10):
        area = width * height * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            break
    else:  # extreme aspect ratios: the largest centred crop of the allowed aspect
        crop_w, crop_h = min(width, round(height * CROP_RATIO[1])), min(height, round(width / CROP_RATIO[0]))
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def reduced_decoding(image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> int:
    """Have a JPEG decoded at 1/2, 1/4 or 1/8 of its size, the smallest at which the crop `box` still has at least
    `size` (height, width) pixels: the crop is then only ever downsampled where the full-size decode would downsample
    it too, while libjpeg skips most of the work (PIL's draft mode scales in the inverse DCT). Returns the reduction:
    1 for an image decoded at full size (the crop is not that much larger than `size`; not a JPEG)."""
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    reduction = max((r for r in (2, 4, 8) if crop_w >= r * size[1] and crop_h >= r * size[0]), default=1)
    # `draft` decodes at the largest reduction that leaves the image at least the asked size: exactly `reduction`.
    if reduction == 1 or image.draft("RGB", (image.width // reduction, image.height // reduction)) is None:
        return 1
    return reduction


def resized_crop(image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """The `box` of an RGB image resized to `size` (height, width) by antialiased bicubic interpolation, as uint8
    [3, height, width]. The same filter as PIL's `resize` (measured: 99.7% of the pixels equal, the others within two
    levels), in torch's uint8 kernel, about 4 times faster."""
    left, top, right, bottom = box
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None, :, top:bottom, left:right]
    return torch.nn.functional.interpolate(pixels, size=size, mode="bicubic", antialias=True)[0]


def pick_caption(value, rng: random.Random) -> str:
    """One of the pair's usable captions (pairs without any are dropped before they are read)."""
    return rng.choice(usable_captions(value))


@contextmanager
def image_errors(value, column: str, where: str):
    """Turns the failure to open or decode a pair's image into an InputError naming `where` (its row or file), the
    file it was read from and its column. The pairs are read undecoded so that an image PIL cannot read is caught
    here, alone."""
    if not isinstance(value, dict):
        raise InputError(f"--dataset {where}: column {column!r} holds {type(value).__name__}, not an image.")
    if value.get("path"):
        where = f"{where} (file {value['path']!r})"
    try:
        yield
    except UnidentifiedImageError:
        raise InputError(f"--dataset {where}: column {column!r} holds bytes PIL cannot read as an image.") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"--dataset {where}: column {column!r} holds an unreadable image ({error}).") from error


def open_image(value: dict) -> Image.Image:
    """A pair's image from its undecoded {"bytes", "path"} value, opened but not decoded yet (`upright_rgb` does):
    in between, a JPEG can be told to decode at a reduced size."""
    if value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    if value.get("path") and is_local_path(value["path"]):
        return Image.open(value["path"])
    return IMAGE_DECODER.decode_example(value)  # a remote file, which `datasets` fetches (and decodes)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image once turned as its EXIF orientation says."""
    width, height = image.size
    return (height, width) if image.getexif().get(ORIENTATION) in TRANSPOSING_ORIENTATIONS else (width, height)


def upright_rgb(image: Image.Image) -> Image.Image:
    """The decoded image, turned as its EXIF orientation says (as `datasets` decodes images), in RGB."""
    image.load()  # decodes: a truncated file fails here
    if image.getexif().get(ORIENTATION) is not None:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def read_image(value, column: str, where: str) -> Image.Image:
    """A pair's RGB image from its undecoded {"bytes", "path"} value; an unreadable one is refused with `where`."""
    with image_errors(value, column, where):
        return upright_rgb(open_image(value))


class PairTransform:
    """One undecoded pair -> (a random resized crop of its image, uint8 [3, H, W]; one of its captions).

    The crop is drawn before the image is decoded, so that a JPEG much larger than it is decoded at a reduced size
    (`reduced_decoding`). The pixels stay uint8 (a quarter of the bytes of float32 through the loader's shared memory);
    `PixelNormalizer` normalises them where the model runs.
    """

    def __init__(self, image_processor, image_column: str, caption_column: str):
        self.size = training_crop_size(image_processor)
        self.image_column = image_column
        self.caption_column = caption_column

    def __call__(self, example: dict, rng: random.Random, where: str) -> tuple[torch.Tensor, str]:
        value = first_present(example, self.image_column)
        with image_errors(value, self.image_column, where):
            image = open_image(value)
            box = crop_box(*upright_size(image), rng)
            reduction = reduced_decoding(image, box, self.size)
            image = upright_rgb(image)
        crop = resized_crop(image, tuple(round(edge / reduction) for edge in box), self.size)
        return crop, pick_caption(example[self.caption_column], rng)


def training_crop_size(image_processor) -> tuple[int, int]:
    """(height, width) of the training crops for an image processor: CLIP's crop, SigLIP's fixed size, SigLIP 2's
    largest square grid of at most `max_num_patches` patches (see `PatchSequences`)."""
    if takes_patch_sequences(image_processor):
        side = math.isqrt(image_processor.max_num_patches) * image_processor.patch_size
        return side, side
    crop = image_processor.crop_size or image_processor.size
    return crop["height"], crop["width"]


def takes_patch_sequences(image_processor) -> bool:
    """Whether the model of `image_processor` takes its images as patch sequences (SigLIP 2's NaFlex towers)."""
    return "spatial_shapes" in image_processor.model_input_names


class PatchSequences:
    """Normalised pixels [B, 3, H, W] -> SigLIP 2's image inputs: `pixel_values` [B, N, p * p * 3], the patches of an
    (H / p, W / p) grid row by row, each patch's pixels row by row with their channels last (as Siglip2ImageProcessor
    flattens them), with `spatial_shapes` that grid's and a `pixel_attention_mask` of 1s (no padding patch).

    Patched on the device, from the uint8 crops every family's loader gives, rather than by the image processor in
    the workers: training keeps its random resized crops, and the loader its uint8 batches (a quarter of float32's
    bytes). The grid is square and fixed (`training_crop_size`), so a batch needs no padding patches; the image
    processor's aspect-keeping grids at inference are other grids, to which the tower resizes its position
    embeddings as it does to this one."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, channels, height, width = pixels.shape
        p, rows, columns = self.patch_size, height // self.patch_size, width // self.patch_size
        patches = pixels.reshape(batch, channels, rows, p, columns, p).permute(0, 2, 4, 3, 5, 1)
        return {
            "pixel_values": patches.reshape(batch, rows * columns, p * p * channels),
            "pixel_attention_mask": torch.ones(batch, rows * columns, dtype=torch.int32, device=pixels.device),
            "spatial_shapes": torch.tensor([[rows, columns]] * batch, device=pixels.device),
        }


class PixelNormalizer:
    """uint8 pixels [..., 3, H, W] -> float32, normalised as the image processor does: rescaled (1/255), less the
    mean, over the standard deviation of each channel. Applied on the training device, to whole micro-batches."""

    def __init__(self, image_processor, device: torch.device | str = "cpu"):
        self.rescale = image_processor.rescale_factor
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32, device=device)[:, None, None]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() * self.rescale - self.mean) / self.std


class PairDataset(torch.utils.data.Dataset):
    """Random-access pairs keyed by (row, epoch): the key seeds the pair's caption choice and crop."""

    def __init__(self, dataset: Dataset, transform: PairTransform, seed: int):
        images = [name for name in alternatives(transform.image_column) if name in dataset.column_names]
        self.dataset = dataset.select_columns([*images, transform.caption_column])
        for name in images:
            self.dataset = self.dataset.cast_column(name, ImageFeature(decode=False))  # see `read_image`
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        row, epoch = key
        return self.transform(self.dataset[row], random.Random(f"{self.seed}/{epoch}/{row}"), f"row {row}")


def stream_filter(cluster: int, out_of_cluster_ratio: float, seed: int):
    """A filter keeping the cluster's pairs and a seeded `out_of_cluster_ratio` share of the others': `keep(coarse_id,
    name)`, where `name` names the pair (its caption in a `datasets` stream, its data file and key with --labels)."""

    def keep(coarse_id: int, name) -> bool:
        if coarse_id == cluster:
            return True
        if coarse_id == NO_CLUSTER or out_of_cluster_ratio == 0:
            return False
        # A hash rather than a stream position: the same pairs are drawn however the stream is split.
        return zlib.crc32(f"{seed}/{name}".encode()) / 2**32 < out_of_cluster_ratio

    return keep


class StreamingPairs(torch.utils.data.IterableDataset):
    """This process's share of a streamed dataset, filtered while streaming, shuffled and augmented.

    Pairs without a usable caption are dropped. Out-of-cluster pairs are drawn by a hash of the caption: a fixed
    sample, where random access redraws it each epoch.
    """

    def __init__(
        self,
        stream: IterableDataset,
        transform: PairTransform,
        cluster: int | None,
        cluster_column: str,
        out_of_cluster_ratio: float,
        seed: int,
        shuffle_buffer: int,
        process_index: int,
        num_processes: int,
    ):
        if stream.features is not None:  # a stream of data files (`data_file_stream`) has its images undecoded already
            stream = stream.decode(False)
        stream = stream.filter(has_caption, input_columns=[transform.caption_column])
        if cluster is not None:
            stream = stream.filter(
                stream_filter(cluster, out_of_cluster_ratio, seed),
                input_columns=[cluster_column, transform.caption_column],
            )
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes)
        self.transform = transform
        self.seed = seed
        self.process_index = process_index
        self.epoch = 0

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.process_index}/{worker.id if worker else 0}")
        self.stream.set_epoch(self.epoch)
        for example in self.stream:
            where = f"pair {example['__key__']!r} of data file {example['__url__']!r}" if "__url__" in example else ""
            yield self.transform(example, rng, where or "a streamed pair")


class PairCollator:
    """Stacks the images and tokenises the captions, truncated to the text tower's length and padded to the longest
    in the batch, or to `max_length` with `pad_to_max_length` (every batch then has the same shape, as a compiled
    model wants)."""

    def __init__(self, tokenizer, max_length: int, pad_to_max_length: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = "max_length" if pad_to_max_length else "longest"

    def __call__(self, pairs: list[tuple]) -> dict[str, torch.Tensor]:
        """(pixels, caption) pairs; a stream that tracks its position (`training.labelled.PlainStream`) adds a third
        element, and the batch keeps its last pair's as `stream_position`."""
        text = self.tokenizer(
            [pair[1] for pair in pairs],
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {
            "pixel_values": torch.stack([pair[0] for pair in pairs]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
        }
        if len(pairs[-1]) > 2:  # a batch is one worker's pairs, in order: its last says where the worker stands
            batch["stream_position"] = torch.tensor(pairs[-1][2])
        return batch
