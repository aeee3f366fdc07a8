"""Caption embeddings for MODE's clustering: any Hugging Face text encoder, written as memory-mappable shards.

Row r of the corpus is row `r % shard_rows` of shard `r // shard_rows`, so a shard is a pure function of the
corpus, the encoder and the seed: any process may compute it, a crashed run resumes at the first missing shard, and
N processes give the same file as one. A pair whose caption is empty or missing gets an all-zero row (a real
caption's embedding is L2-normalised), which the clustering reads as "no cluster".

Not imported by `modeling_mode/__init__.py`: it needs numpy and tqdm beyond what Hub remote-code users have.
"""

import json
import logging
import os
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from ...families import FAMILIES, Family, text_embed_dim, text_tower_config, text_tower_family
from ...modeling_mode_clip import router_class
from ..core.errors import InputError
from ..core.files import atomic_path, write_text
from ..core.processors import load_tokenizer
from ..core.resume_guard import check_same_settings
from ..core.status import ProgressBar
from ..data.data_files import caption_of, read_samples
from ..data.pairs import usable_captions

logger = logging.getLogger(__name__)

# "projection": a dual encoder's projected text embedding (CLIP's, SigLIP's, ...: the space ModeCLIPModel routes in);
# the others pool a sentence encoder's last hidden states: masked mean (sentence-transformers' MiniLM), first token, or
# the BERT pooler (SimCSE).
POOLINGS = ("projection", "mean", "cls", "pooler")


def tower_family(config) -> Family | None:
    """The family of a dual encoder's checkpoint or of its text tower's; None for other encoders."""
    return FAMILIES.get(config.model_type) or text_tower_family(config)


class CaptionEncoder:
    """L2-normalised caption embeddings from a dual encoder's text tower or any `AutoModel` sentence encoder.

    Args:
        name_or_path: a Hub id or a local directory: a checkpoint of a MODE expert family (`CLIPModel`,
            `SiglipModel`, ...) or of its text tower (`CLIPTextModelWithProjection`, `SiglipTextModel`, ...), or
            any model `AutoModel` loads with its tokenizer.
        pooling: one of `POOLINGS`; defaults to `"projection"` for a dual encoder and `"mean"` otherwise.
        device: where to run; half precision on CUDA, float32 elsewhere.
        max_length: token limit; defaults to what the tokenizer and the position embeddings allow.

    Raises InputError for a pooling or a max_length the encoder cannot do, before any caption is read.
    """

    def __init__(self, name_or_path: str, pooling: str | None = None, device=None, max_length: int | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        config = AutoConfig.from_pretrained(name_or_path)
        self.family = tower_family(config)
        is_tower = self.family is not None
        self.pooling = pooling or ("projection" if is_tower else "mean")
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        if is_tower != (self.pooling == "projection"):
            raise InputError(
                f"pooling {self.pooling!r} does not fit {name_or_path!r} (model_type {config.model_type!r}): "
                "'projection' is for dual encoders' text towers, 'mean', 'cls' or 'pooler' for other encoders."
            )
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if is_tower:
            self.model = _text_tower(name_or_path, config, dtype)
            self.embed_dim = text_embed_dim(self.model.config)
        else:
            self.model = AutoModel.from_pretrained(name_or_path, dtype=dtype)
            self.embed_dim = self.model.config.hidden_size
        self.model.to(self.device).eval()
        self.tokenizer = load_tokenizer(name_or_path)
        positions = getattr(self.model.config, "max_position_embeddings", None) or 512
        if max_length is not None and max_length > positions:
            raise InputError(f"max_length {max_length} exceeds the {positions} positions of {name_or_path!r}.")
        self.max_length = max_length or min(self.tokenizer.model_max_length, positions)
        self.name_or_path = name_or_path
        if self.pooling == "pooler":
            self.encode(["a caption"])  # an encoder without a pooler fails here, not after a corpus' worth of work

    @torch.inference_mode()
    def encode(self, captions: list[str], batch_size: int = 128) -> np.ndarray:
        """Embeddings [len(captions), embed_dim] float32, L2-normalised, in the order of `captions`."""
        embeddings = np.empty((len(captions), self.embed_dim), dtype=np.float32)
        # One call tokenizes everything (in parallel, in Rust); batches of equal token counts then need no padding
        # to speak of. The rows go back to their places below.
        token_ids = self.tokenizer(captions, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        for start in range(0, len(captions), batch_size):
            rows = order[start : start + batch_size]
            tokens = self.tokenizer.pad(
                {"input_ids": [token_ids[i] for i in rows]}, return_tensors="pt", **self.padding
            )
            pooled = self._pool(tokens.to(self.device))
            embeddings[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return embeddings

    @property
    def padding(self) -> dict:
        """SigLIP's text tower pools its last position: its captions are padded to the full context, as it was
        trained; the others' to the batch's longest."""
        if self.pooling == "projection" and self.family.padding == "max_length":
            return {"padding": "max_length", "max_length": self.max_length}
        return {}

    def _pool(self, tokens) -> torch.Tensor:
        outputs = self.model(**tokens)
        if self.pooling == "projection":
            return getattr(outputs, self.family.text_embedding)
        if self.pooling == "pooler":
            if getattr(outputs, "pooler_output", None) is None:  # absent, or None (BERT without its pooling layer)
                raise InputError(f"{self.name_or_path!r} has no pooler: use --pooling mean or cls.")
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def _text_tower(name_or_path: str, config, dtype) -> PreTrainedModel:
    """The text tower and its projection (`CLIPTextModelWithProjection`, `SiglipTextModel`, ...), from a checkpoint of
    that tower or of the whole dual encoder."""
    if config.model_type not in FAMILIES:
        return router_class(config).from_pretrained(name_or_path, dtype=dtype)
    return text_tower_of(AutoModel.from_pretrained(name_or_path, dtype=dtype))


def text_tower_of(model: PreTrainedModel) -> PreTrainedModel:
    """A dual encoder's text tower with its projection, sharing the model's weights: CLIP's and MetaCLIP 2's project
    with `text_projection`; SigLIP's `text_model` is its whole `SiglipTextModel`, head included."""
    tower_config = text_tower_config(model.config)
    if isinstance(model.text_model, router_class(tower_config)):
        return model.text_model
    with torch.device("meta"):  # its weights are the model's, set right below
        tower = router_class(tower_config)(tower_config)
    tower.text_model = model.text_model
    if hasattr(tower, "text_projection"):
        tower.text_projection = model.text_projection
    return tower.to(model.dtype)


def choose_captions(values: list, rng: np.random.Generator) -> list[str | None]:
    """One caption per pair: a list of captions gives one of its usable entries at random; a pair without a usable
    caption (`data.usable_captions`: None, a blank string, a list of none, anything but strings) gives None."""
    chosen = []
    for value in values:
        usable = usable_captions(value)
        if usable and isinstance(value, (list, tuple)):
            chosen.append(usable[rng.integers(len(usable))])
        else:
            chosen.append(usable[0] if usable else None)
    return chosen


class EmbeddingShards:
    """A folder of `shard-00000.npy` files ([rows, embed_dim], float32 or float16, memory-mappable) plus `meta.json`.

    `meta` holds `embed_dim`, the storage `dtype` (float32 when absent) and the layout: `num_rows` and `shard_rows`
    (shard s holds rows s * shard_rows onwards), or `data_files` (one shard per data file, holding that file's pairs,
    whose count is known once the shard is written; `shard-00000.keys.json` beside it lists their keys). The rest
    says what the embeddings are of (encoder, pooling, corpus, ...): a folder written otherwise is refused, not mixed.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict):
        self.folder = Path(folder)
        self.meta = meta
        self.embed_dim = meta["embed_dim"]
        self.dtype = np.dtype(meta.get("dtype", "float32"))
        self.shard_rows = meta.get("shard_rows")  # None: one shard per data file
        if self.shard_rows is None:
            self.num_shards = len(meta["data_files"])
        else:
            self.num_shards = max(1, -(-meta["num_rows"] // self.shard_rows))

    @classmethod
    def create(cls, folder: str | os.PathLike, meta: dict, write: bool = True) -> "EmbeddingShards":
        """Open `folder` for these settings, writing meta.json if it is new and `write` (the main process) is set.

        Raises InputError, on every process, if the folder holds embeddings made with other settings."""
        shards = cls(folder, meta)
        if shards.meta_path.exists():
            found = json.loads(shards.meta_path.read_text())
            check_same_settings(
                {key: found.get(key) for key in meta}, meta, f"{folder} holds embeddings made",
                "use a new --output, or delete that folder to recompute.",
            )  # fmt: skip
        if write:
            shards.write_meta()
        return shards

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def write_meta(self) -> None:
        """Write meta.json if it is not there yet (`create` has checked that one there holds these settings)."""
        if not self.meta_path.exists():
            write_text(self.meta_path, json.dumps(self.meta, indent=2))

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.npy"

    def keys_path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.keys.json"

    @cached_property
    def offsets(self) -> np.ndarray:
        """Where each shard's rows start in the corpus, then the corpus' size. With one shard per data file, the
        shards' sizes are read from their headers: every shard must be written by then."""
        if self.shard_rows is not None:
            return np.minimum(np.arange(self.num_shards + 1) * self.shard_rows, self.meta["num_rows"])
        return np.cumsum([0] + [len(self.read(shard)) for shard in range(self.num_shards)])

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def rows_of(self, shard: int) -> range:
        return range(int(self.offsets[shard]), int(self.offsets[shard + 1]))

    def is_done(self, shard: int) -> bool:
        return self.path(shard).exists()

    def write(self, shard: int, embeddings: np.ndarray, keys: list[str] | None = None) -> None:
        """Write a shard (its `keys` first, with one shard per data file): it is done once its .npy is there."""
        rows = len(self.rows_of(shard)) if self.shard_rows is not None else len(embeddings)
        if embeddings.shape != (rows, self.embed_dim):
            raise ValueError(f"shard {shard} must have shape {(rows, self.embed_dim)}, got {embeddings.shape}.")
        if keys is not None:
            write_text(self.keys_path(shard), json.dumps(keys))
        with atomic_path(self.path(shard)) as partial, open(partial, "wb") as file:
            np.save(file, embeddings.astype(self.dtype, copy=False))

    def read(self, shard: int) -> np.ndarray:
        """The shard as a read-only memory map: nothing is read until its rows are used."""
        if not self.is_done(shard):
            raise ValueError(f"{self.path(shard)} is missing: the embedding step has not finished.")
        return np.load(self.path(shard), mmap_mode="r")

    def read_keys(self, shard: int) -> list[str]:
        return json.loads(self.keys_path(shard).read_text())

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings (float32) of sorted row ids, one shard open at a time."""
        out = np.empty((len(rows), self.embed_dim), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for shard in np.unique(shard_of):
            at = np.flatnonzero(shard_of == shard)
            out[at] = self.read(int(shard))[rows[at] - self.offsets[shard]]
        return out


def shard_captions(dataset, caption_column: str, shards: EmbeddingShards, shard: int, seed: int) -> list[str | None]:
    """The caption embedded for each pair of `shard` (`choose_shard_captions`; None: no usable caption)."""
    rows = shards.rows_of(shard)
    return choose_shard_captions(dataset[rows.start : rows.stop][caption_column], shard, seed)


def choose_shard_captions(values: list, shard: int, seed: int) -> list[str | None]:
    """`choose_captions` seeded by shard: a list-of-captions column gives the same caption whichever process embeds
    the shard, and the assembly, re-expressing centroids in the router's space, reads the very captions the
    clustering embedded."""
    return choose_captions(values, np.random.default_rng([seed, shard]))


def embed_corpus(
    dataset,
    caption_column: str,
    encoder: CaptionEncoder,
    shards: EmbeddingShards,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 128,
    seed: int = 0,
) -> int:
    """Embed this process's unfinished shards (shard s belongs to rank s % world_size); returns captions embedded."""
    if caption_column not in dataset.column_names:
        raise InputError(f"The dataset has no caption column {caption_column!r}; its columns: {dataset.column_names}.")
    captions_only = dataset.select_columns([caption_column])  # never decode the images

    def embed(shard: int) -> int:
        chosen = shard_captions(captions_only, caption_column, shards, shard, seed)
        shards.write(shard, embed_captions(encoder, chosen, batch_size))
        return len(chosen)

    return _embed_shards(embed, shards, rank, world_size, unit="shards")


def embed_data_files(
    files: list[str],
    caption_column: str,
    encoder: CaptionEncoder,
    shards: EmbeddingShards,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 128,
    seed: int = 0,
) -> int:
    """Embed this process's unfinished data files, one shard each (file f belongs to rank f % world_size), reading
    only their caption column (`data_files.read_samples`: images are skipped); returns captions embedded."""

    def embed(shard: int) -> int:
        keys, chosen = data_file_captions(files[shard], caption_column, shard, seed)
        shards.write(shard, embed_captions(encoder, chosen, batch_size), keys)
        return len(chosen)

    return _embed_shards(embed, shards, rank, world_size, unit="data files")


def data_file_captions(file: str, caption_column: str, shard: int, seed: int) -> tuple[list[str], list[str | None]]:
    """A data file's keys and the caption embedded for each of its pairs, the file being embedding shard `shard`:
    only its caption column is read (`data_files.read_samples`: images are skipped)."""
    samples = list(read_samples(file, [caption_column]))
    values = [  # a tar sample may lack it
        caption_of(sample.get(caption_column), f"pair {sample['__key__']!r} of data file {file!r}")
        for sample in samples
    ]
    return [sample["__key__"] for sample in samples], choose_shard_captions(values, shard, seed)


def embed_captions(encoder: CaptionEncoder, chosen: list[str | None], batch_size: int) -> np.ndarray:
    """Embeddings of chosen captions; a pair without one (None) gets an all-zero row."""
    embeddings = np.zeros((len(chosen), encoder.embed_dim), dtype=np.float32)
    present = [i for i, caption in enumerate(chosen) if caption is not None]
    if present:
        embeddings[present] = encoder.encode([chosen[i] for i in present], batch_size)
    return embeddings


def _embed_shards(embed, shards: EmbeddingShards, rank: int, world_size: int, unit: str) -> int:
    """Call `embed(shard)` (which returns the pairs it embedded) for this process's shards not yet on disk."""
    todo = [s for s in range(rank, shards.num_shards, world_size) if not shards.is_done(s)]
    start, done = time.perf_counter(), 0
    with ProgressBar(total=len(todo), unit=unit, desc=f"embedding (process {rank})", dynamic_ncols=True) as bar:
        for shard in todo:
            done += embed(shard)
            bar.update()
            bar.set_postfix(captions_per_s=f"{done / (time.perf_counter() - start):.0f}")
    if done:
        seconds = time.perf_counter() - start
        logger.info(f"process {rank}: embedded {done} captions in {seconds:.1f} s ({done / seconds:.0f} captions/s)")
    return done
