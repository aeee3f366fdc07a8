"""What more than one test module uses: tiny models built here (no downloads), corpora, clusterings and runs written
as the pipeline writes them, and the scripts run in this process. conftest.py holds the fixtures."""

import importlib.util
import io
import json
import os
import runpy
import socket
import subprocess
import sys
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    MetaClip2Config,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    SiglipConfig,
    SiglipImageProcessorPil,
)

from modeling_mode import ModeCLIPModel
from modeling_mode.configuration_mode_clip import text_tower_config
from modeling_mode.families import FAMILIES, text_embed_dim
from modeling_mode.lib.clustering.labels_table import describe_files, finish_labels, write_labels
from modeling_mode.lib.clustering.outputs import CLUSTERS_FILE, CLUSTERS_JSON, Clusters, save_clusters
from modeling_mode.lib.clustering.run import ClusterArguments, cluster
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.files import write_json
from modeling_mode.lib.data.data_files import list_data_files, read_samples, relative_names, write_tar_sample
from modeling_mode.lib.reshard.run import ReshardArguments, reshard
from modeling_mode.lib.training.outputs import TRAINING_ARGS
from modeling_mode.lib.training.processors import char_level_tokenizer, pil_image_processor
from modeling_mode.modeling_mode_clip import router_from_config

ROOT = Path(__file__).resolve().parents[1]
# The clusterings written here (write_clustering, cluster_of, make_pairs) and run (cluster_tar_corpus): 6 fine
# clusters, 3 per expert.
EXPERTS, FINE_CLUSTERS = 2, 6


# ---------------------------------------------------------------------------------------------------- tiny models


IMAGE_SIZE = 30
EMBED_DIM = 16


def tiny_clip_config(**overrides) -> CLIPConfig:
    """A tiny CLIPConfig: two layers of width 32, IMAGE_SIZE-pixel images, EMBED_DIM-d embeddings."""
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(tower, vocab_size=600, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(tower, image_size=IMAGE_SIZE, patch_size=10)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED_DIM, **overrides)


def tiny_family_config(family: str):
    """A tiny config of one expert family (`modeling_mode.families`), the towers of `tiny_clip_config`. SigLIP 2 sees
    IMAGE_SIZE-pixel images as a grid of at most 9 patches of 10 pixels."""
    if family == "clip":
        return tiny_clip_config()
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(tower, vocab_size=600, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(tower, patch_size=10, **({"num_patches": 9} if family == "siglip2" else {"image_size": IMAGE_SIZE}))
    if family == "metaclip_2":
        return MetaClip2Config(text_config=text, vision_config=vision, projection_dim=EMBED_DIM)
    # SigLIP has no image projection: its text head maps to the vision width, 32 here.
    config_class = SiglipConfig if family == "siglip" else Siglip2Config
    return config_class(text_config=text, vision_config=vision)


def family_mode(family: str, num_experts=2, seed=0) -> ModeCLIPModel:
    """A tiny random MODE of `family` experts and a random text tower of the family as router; SigLIP's experts each
    with a logit bias of its own."""
    torch.manual_seed(seed)
    config = tiny_family_config(family)
    experts = [AutoModel.from_config(config).eval() for _ in range(num_experts)]
    if FAMILIES[family].has_logit_bias:  # not SigLIP's -10 for every expert: each bias must be seen to count
        for k, expert in enumerate(experts):
            expert.logit_bias.data.fill_(-1.0 - k)
    router = router_from_config(text_tower_config(config)).eval()
    centroids = torch.nn.functional.normalize(torch.randn(4, text_embed_dim(router.config)), dim=-1)
    return ModeCLIPModel.from_experts(experts, centroids, [0, 1, 0, 1], router).eval()


def family_image_processor(family: str):
    """The PIL image processor of a family for `tiny_family_config`'s images."""
    if family == "siglip2":
        return Siglip2ImageProcessorPil(patch_size=10, max_num_patches=9)
    if family == "siglip":
        return SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return make_image_processor()


def make_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer built here: no download."""
    return char_level_tokenizer(model_max_length=64)


def make_image_processor():
    """A CLIP image processor for IMAGE_SIZE-pixel images."""
    return pil_image_processor(IMAGE_SIZE)


def make_mode(num_experts=3, num_fine_clusters=12, seed=0, **router_settings) -> ModeCLIPModel:
    """A tiny random MODE: random experts, router, centroids and fine-to-coarse map, seeded."""
    torch.manual_seed(seed)
    config = tiny_clip_config()
    experts = [CLIPModel(config).eval() for _ in range(num_experts)]
    router = CLIPTextModelWithProjection(text_tower_config(config)).eval()
    centroids = torch.nn.functional.normalize(torch.randn(num_fine_clusters, EMBED_DIM), dim=-1)
    fine_to_coarse = torch.randint(num_experts, (num_fine_clusters,)).tolist()
    return ModeCLIPModel.from_experts(experts, centroids, fine_to_coarse, router, **router_settings).eval()


def reset_accelerate_state():
    """Accelerate's state is a process-wide singleton: a run in this process must not hand its own to the next."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ---------------------------------------------------------------------------------------------------- nearest centres


# Two computations of a point's nearest centre (faiss and numpy; runs with other thread counts) round differently:
# one float32 dot product of 384 terms is off by up to ~384 * 6e-8 = 2e-5, and unit vectors that agree to 1e-5 per
# coordinate (d = 16) change a similarity by at most 2 * 4e-5. A point whose similarities to two centres are closer
# than this is a tie that rounding may break either way; 1e-3 is well above both and well below real gaps.
TIE = 1e-3


def assert_nearest_up_to_ties(points: np.ndarray, centroids: np.ndarray, labels, other_labels) -> None:
    """Two labellings of `points` with their nearest of `centroids` agree, but for points within TIE of both
    centres they name."""
    differ = np.flatnonzero(np.asarray(labels) != np.asarray(other_labels))
    similarity = points[differ] @ centroids.T
    rows = np.arange(len(differ))
    gaps = np.abs(similarity[rows, np.asarray(labels)[differ]] - similarity[rows, np.asarray(other_labels)[differ]])
    assert (gaps < TIE).all(), f"points {differ[gaps >= TIE].tolist()} are labelled apart by more than a tie"


def normalised(x: np.ndarray) -> np.ndarray:
    """The rows of `x` scaled to unit length, as float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- streamed corpus


THINGS = ["dog", "cat", "car", "boat", "tree", "shoe", "cake", "bird"]
FILES, PER_FILE = 6, 30
NO_CAPTION = {7: None, 40: [], 95: ["  "], 151: None}  # a missing member or null, an empty list, a blank caption
# Not an image: any decoder fails on these bytes, so a run that decoded one would fail. 4 KB of random bytes
# each, so that the corpus is mostly image bytes that do not compress, as a real one is.
NOT_AN_IMAGE = b"\xff\xd8 these bytes are no JPEG "


def image_bytes(row: int) -> bytes:
    """Pair `row`'s image member: NOT_AN_IMAGE, then 4 KB of seeded random bytes."""
    return NOT_AN_IMAGE + np.random.default_rng(row).bytes(4096)


def caption_lists() -> list[list[str] | None]:
    """The 180 pairs' lists of two captions, NO_CAPTION's rows without a usable one."""
    captions = [[f"a photo of a {THINGS[i % 8]}", f"my {THINGS[(i * 3) % 8]}, number {i}"] for i in range(180)]
    for row, value in NO_CAPTION.items():
        captions[row] = value
    return captions


def write_tar_corpus(folder: Path) -> Path:
    """6 webdataset shards of 30 pairs: `jpg` (not an image) and `txt` (a JSON list of captions; absent: none)."""
    folder.mkdir(parents=True)
    captions = caption_lists()
    for file in range(FILES):
        with tarfile.open(folder / f"shard-{file:02d}.tar", "w") as tar:
            for row in range(file * PER_FILE, (file + 1) * PER_FILE):
                sample = {"__key__": f"pair-{row:04d}", "jpg": image_bytes(row)}
                if captions[row] is not None:
                    sample["txt"] = json.dumps(captions[row]).encode()
                write_tar_sample(tar, sample)
    return folder


# ---------------------------------------------------------------------------------------------------- assembly inputs


ENCODER_DIM = 8


def unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Random L2-normalised centroids in the clustering encoder's space."""
    x = rng.standard_normal((rows, ENCODER_DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_clustering(folder: Path, encoder: str, seed: int = 0) -> Path:
    """A finished train/cluster.py run, written as that script writes it: clusters.safetensors (its settings in the
    metadata), the labelled pairs, then clusters.json (the completion marker, with the same settings) last. The
    caption encoder is not the router (8-d embeddings), so assembly re-expresses the centroids from the captions."""
    rng = np.random.default_rng(seed)
    fine_ids = np.arange(2 * FINE_CLUSTERS) % FINE_CLUSTERS
    fine_to_coarse = np.arange(FINE_CLUSTERS) // (FINE_CLUSTERS // EXPERTS)
    pairs = {
        "image": [PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in fine_ids],
        "caption": [f"a photo of thing {i} in cluster {f}" for i, f in enumerate(fine_ids)],
        "fine_id": fine_ids,
        "coarse_id": fine_to_coarse[fine_ids],
    }
    features = Features(image=Image(), caption=Value("string"), fine_id=Value("int32"), coarse_id=Value("int32"))
    Dataset.from_dict(pairs, features=features).save_to_disk(str(folder / "dataset"))
    fit = Clusters(
        fine_centroids=unit_rows(rng, FINE_CLUSTERS),
        coarse_centroids=unit_rows(rng, EXPERTS),
        fine_to_coarse=fine_to_coarse,
        method="two-level",
        fit_sizes=np.bincount(fine_ids),
    )
    embeddings = {"encoder": encoder, "dataset": str(folder.parent / "pairs"), "embed_dim": ENCODER_DIM}
    embeddings |= {"num_rows": len(fine_ids), "shard_rows": 5, "caption_seed": seed}  # which captions it embedded
    settings = {"method": "two-level", "fine_clusters": FINE_CLUSTERS, "experts": EXPERTS, "seed": seed}
    settings |= {"embeddings": embeddings, "clusters": None}
    save_clusters(folder / CLUSTERS_FILE, fit, settings)
    report = {
        "encoder": encoder,
        "pooling": "mean",
        "fine_distance_quantiles": {"0.5": 0.12, "0.9": 0.3, "0.99": 0.5},
        "embed_dim": ENCODER_DIM,
        "num_fine_clusters": FINE_CLUSTERS,
        "num_experts": EXPERTS,
        "method": "two-level",
        "balance": "capacity-capped greedy",
        "fit_sample": len(fine_ids),
        "seed": seed,
        "fine_sizes": np.bincount(fine_ids).tolist(),
        "coarse_sizes": np.bincount(fine_to_coarse[fine_ids]).tolist(),
        "caption_column": "caption",
        "dataset": embeddings["dataset"],
        "split": "train",
        "settings": settings,
    }
    write_json(folder / CLUSTERS_JSON, report)
    return folder


def write_expert(path: Path, cluster: int, seed: Path, clusters: Path) -> Path:
    """A finished train/expert.py run forked from `seed`: its model, then training_args.json with final_step last."""
    CLIPModel(tiny_clip_config()).save_pretrained(path)
    checkpoint = str(seed / "checkpoints" / "step_4")
    args = {"dataset": str(clusters / "dataset"), "output": str(path), "init": checkpoint, "learning_rate": 5e-4}
    run = {"cluster": cluster, "start": "fork", "start_checkpoint": checkpoint, "start_step": 4, "final_step": 6}
    write_json(path / TRAINING_ARGS, {"args": args, "run": run})
    return path


def write_run(root: Path) -> dict:
    """What the pipeline leaves before assembly, with the absolute local paths its records hold: a seed CLIP (the
    router, with its tokenizer and image processor), a finished clustering and two finished experts."""
    torch.manual_seed(0)
    seed = root / "seed"
    for part in (CLIPModel(tiny_clip_config()), make_tokenizer(), make_image_processor()):
        part.save_pretrained(seed)
    clusters = write_clustering(root / "clusters", encoder=str(root / "encoders" / "all-MiniLM-L6-v2"))
    experts = [write_expert(root / f"expert-{k}", k, seed, clusters) for k in range(EXPERTS)]
    return dict(seed=seed, clusters=clusters, experts=experts)


CLUSTER_FLAGS = dict(fine_clusters=FINE_CLUSTERS, experts=EXPERTS, fit_sample=120, seed=3)


def cluster_tar_corpus(corpus: Path, encoder: str, output: Path) -> Path:
    """`output`: train/cluster.py --streaming of a corpus of tar shards (`write_tar_corpus`'s), in this process."""
    flags = dict(dataset=str(corpus), caption_column="txt", streaming=True, encoder=encoder, output=str(output))
    cluster(ClusterArguments(**flags, **CLUSTER_FLAGS), Accelerator())
    return output


def fails(main, argv: list, capsys) -> str:
    """Run `main(argv)` as a script's __main__ guard does (`cli.run`): it must exit with status 2 after one error line,
    the last thing on stderr (progress bars of the work done until then may come before it); returns that line."""
    capsys.readouterr()  # what the test's own set-up printed
    with pytest.raises(SystemExit) as exit:
        cli.run(partial(main, [str(arg) for arg in argv]))
    assert exit.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.endswith(errors[0] + "\n") and "Traceback" not in stderr, stderr
    return errors[0]


def run_script(script: Path, *argv: str, monkeypatch) -> int:
    """The exit status of `script` run as `__main__` in this process (no new interpreter to start)."""
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(script), run_name="__main__")
    return exit.value.code


# ---------------------------------------------------------------------------------------------------- evaluation


def load_script(name):
    """An `eval/` script as a module, so that a test calls its `main(argv)` in this process."""
    spec = importlib.util.spec_from_file_location(f"eval_{name}", ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ZEROSHOT, RETRIEVAL = load_script("zeroshot"), load_script("retrieval")


def save_mode(path):
    """A tiny MODE with its tokenizer and image processor, saved as assemble leaves one."""
    for part in (make_mode(num_experts=3, num_fine_clusters=9), make_tokenizer(), make_image_processor()):
        part.save_pretrained(path)
    return path


def random_images(count, seed=0):
    """`count` seeded random 40x36 RGB images."""
    rng = np.random.default_rng(seed)
    return [PILImage.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------- labelled corpus


def cluster_of(index: int) -> tuple[int, int]:
    """(fine id, coarse id) of pair `index`: every seventh pair has no usable caption, hence no cluster."""
    if index % 7 == 3:
        return -1, -1
    fine = (index * 5) % FINE_CLUSTERS
    return fine, fine // (FINE_CLUSTERS // EXPERTS)


def caption_for(index: int) -> str:
    """Pair `index`'s caption naming its coarse cluster; blank for a pair without a cluster."""
    fine, coarse = cluster_of(index)
    return " " if coarse < 0 else f"cluster {coarse} pair {index}"


def jpeg(index: int) -> bytes:
    """A seeded random JPEG for pair `index` (its height varies with the index)."""
    pixels = np.random.default_rng(index).integers(0, 256, (24 + index % 9, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_tar_corpus(folder: Path, shard_sizes=(7, 9, 5, 8)) -> list[str]:
    """Webdataset shards of pairs `jpg` + `txt`, keyed `sNN/IIIII` (a folder in the key, as web shards often have)."""
    folder.mkdir(parents=True)
    index = 0
    for number, size in enumerate(shard_sizes):
        with tarfile.open(folder / f"{number:05d}.tar", "w") as tar:
            for _ in range(size):
                sample = {"__key__": f"s{number}/{index:05d}", "jpg": jpeg(index), "txt": caption_for(index).encode()}
                write_tar_sample(tar, sample)
                index += 1
    return list_data_files(str(folder))


def rewrite_tar(shard: Path, edit) -> None:
    """Rewrite a tar shard in place: `edit` maps its [(member, bytes)] to the new ones (sizes follow the bytes)."""
    with tarfile.open(shard) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar]
    with tarfile.open(shard, "w") as tar:
        for member, data in edit(members):
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def not_utf8(members: list) -> list:
    """A tar edit: every `txt` member's bytes made invalid UTF-8."""
    return [(member, b"\xff\xfe caption" if member.name.endswith(".txt") else data) for member, data in members]


def label_corpus(files: list[str], labels: Path, dataset: str) -> Path:
    """The labels table a clustering of `files` would write, with `cluster_of`'s ids."""
    row, names = 0, relative_names(dataset, files)
    for part, (file, name) in enumerate(zip(files, names)):
        keys = [sample["__key__"] for sample in read_samples(file, [] if file.endswith(".parquet") else ["txt"])]
        rows = np.arange(row, row + len(keys))
        ids = np.asarray([cluster_of(i) for i in rows]).reshape(-1, 2)
        write_labels(labels, part, name, keys, rows, ids[:, 0], ids[:, 1])
        row += len(keys)
    meta = {
        "dataset": dataset,
        "split": "train",
        "caption_column": "txt",
        "num_rows": row,
        "data_files": describe_files(files, names),
        "num_experts": EXPERTS,
        "num_fine_clusters": FINE_CLUSTERS,
        "clusters_settings": {"seed": 0},
    }
    finish_labels(labels, meta)
    return labels


def labelled_tar_corpus(root: Path) -> tuple[str, list[str], str]:
    """(the corpus folder, its data files, its labels table) of `make_tar_corpus`."""
    files = make_tar_corpus(root / "corpus")
    return str(root / "corpus"), files, str(label_corpus(files, root / "labels", str(root / "corpus")))


def launch_two_cpu_processes(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` of two CPU processes on gloo (hf-notes: --cpu would start only one): `args` are the script
    (or `-m MODULE`) and its flags."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = "--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no".split()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--main_process_port", str(port), *args]
    return subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=timeout)


def run_reshard(dataset, labels, output, on_shard=None, **flags) -> dict:
    """train/reshard.py's `reshard`, in this process."""
    return reshard(ReshardArguments(dataset=dataset, labels=labels, output=str(output), **flags), on_shard)


# ---------------------------------------------------------------------------------------------------- expert training


EXPERT = ROOT / "train/expert.py"
_spec = importlib.util.spec_from_file_location("expert_cli", EXPERT)
expert_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(expert_cli)
QUIET = "--num-workers 0 --report-to none --warmup-steps 2".split()
# What the clustering leaves without a cluster (-1): pairs without a usable caption, in each of its forms.
NO_CAPTIONS = [None, [], [""], [" ", "\n"]]


def train_here(*argv) -> str:
    """train/expert.py's `main`, in this process: what a subprocess would run, without starting Python again."""
    try:
        return expert_cli.main([str(arg) for arg in argv])
    finally:
        reset_accelerate_state()


def make_pairs(path, n=40, clustered=True, seed=0) -> str:
    """Random images of varied sizes; each caption names its pair's coarse cluster; fine cluster f -> expert f // 3.
    Every eighth pair has no usable caption and so, as the clustering labels it, no cluster (-1)."""
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, FINE_CLUSTERS, n).astype(np.int32)
    fine[::8] = -1
    coarse = np.where(fine >= 0, fine // (FINE_CLUSTERS // EXPERTS), -1).astype(np.int32)
    sizes = rng.integers(24, 48, (n, 2))
    images = [PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    captions = [[f"cluster {c} pair {i}", f"pair {i} of cluster {c}"] for i, c in enumerate(coarse)]
    for k, i in enumerate(np.flatnonzero(fine < 0)):
        captions[i] = NO_CAPTIONS[k % len(NO_CAPTIONS)]
    columns = {"image": images, "caption": captions, "fine_id": fine, "coarse_id": coarse}
    ids = Value("int32")
    features = {"image": Image(), "caption": Sequence(Value("string")), "fine_id": ids, "coarse_id": ids}
    if not clustered:
        columns = {k: columns[k] for k in ("image", "caption")}
        features = {k: features[k] for k in ("image", "caption")}
    Dataset.from_dict(columns, features=Features(features)).save_to_disk(str(path))
    return str(path)


def assert_same_weights(run_dir, reference_dir, atol: float):
    """Two runs' model.safetensors hold the same tensors, up to `atol`."""
    weights, reference = (
        load_file(Path(run_dir) / "model.safetensors"),
        load_file(Path(reference_dir) / "model.safetensors"),
    )
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=atol, msg=name)


def expert_command(monkeypatch, capsys, *argv) -> tuple[int, list[str]]:
    """train/expert.py run as a command (its `__main__` block) in this process: its exit status and stderr lines."""
    monkeypatch.setattr(sys, "argv", [str(EXPERT), *map(str, argv)])
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(EXPERT), run_name="__main__")
    finally:
        reset_accelerate_state()
    return exited.value.code, capsys.readouterr().err.strip().splitlines()
