"""train/cluster.py --streaming: a corpus of tar shards or parquet files, read a file and its captions at a time,
clustered exactly as in memory, labelled in the labels table (no copy), resumable per data file."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset, load_from_disk
from helpers import (
    FILES,
    NO_CAPTION,
    NOT_AN_IMAGE,
    PER_FILE,
    caption_lists,
    image_bytes,
    make_tokenizer,
    not_utf8,
    rewrite_tar,
    tiny_clip_config,
    write_tar_corpus,
)
from hub_server import LocalHub
from huggingface_hub import HfApi
from transformers import CLIPModel

from modeling_mode.lib.clustering.embedding import CaptionEncoder, EmbeddingShards, embed_data_files
from modeling_mode.lib.clustering.labels_table import read_labels
from modeling_mode.lib.clustering.outputs import read_finished_run
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.files import LOCK
from modeling_mode.lib.data.data_files import fingerprint, list_data_files

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "cluster.py"
_spec = importlib.util.spec_from_file_location("cluster_cli", SCRIPT)
cluster_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_cli)


FLAGS = ["--fine-clusters", 6, "--experts", 2, "--fit-sample", 120, "--seed", 3]


def write_parquet_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    captions = caption_lists()
    for file in range(FILES):
        rows = slice(file * PER_FILE, (file + 1) * PER_FILE)
        table = pa.table(
            {
                "image": pa.array([image_bytes(row) for row in range(rows.start, rows.stop)], pa.binary()),
                "caption": pa.array(captions[rows], pa.list_(pa.string())),
            }
        )
        pq.write_table(table, folder / f"train-{file:05d}.parquet")
    return folder


CORPORA = {"tar": (write_tar_corpus, "txt"), "parquet": (write_parquet_corpus, "caption")}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    """The tiny random CLIP of conftest's `tiny_clip`, saved once for the module."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "tiny-clip"
    CLIPModel(tiny_clip_config()).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory, encoder) -> Path:
    """The same captions as a saved Dataset, clustered in memory in shards of one data file's size: each shard
    then embeds the very captions (the same seeded choice from each list) a data file's shard does."""
    root = tmp_path_factory.mktemp("in-memory")
    Dataset.from_dict({"caption": caption_lists()}).save_to_disk(root / "pairs")
    run("--dataset", root / "pairs", "--encoder", encoder, "--shard-rows", PER_FILE, "--output", root / "out")
    return root / "out"


@pytest.fixture(scope="module", params=CORPORA)
def corpus(request, tmp_path_factory) -> tuple[Path, str]:
    write, caption_column = CORPORA[request.param]
    return write(tmp_path_factory.mktemp(request.param) / "corpus"), caption_column


def run(*args) -> dict:
    return cluster_cli.main([str(a) for a in [*FLAGS, *args]])  # args last: they may change FLAGS


def streaming(corpus, encoder, output, *more) -> dict:
    folder, caption_column = corpus
    return run("--dataset", folder, "--caption-column", caption_column, "--encoder", encoder, "--streaming",
               "--output", output, *more)  # fmt: skip


def table_rows(folder: Path) -> tuple[dict, list[dict]]:
    meta, parts = read_labels(folder / "labels")
    return meta, [row for part in parts for row in part.to_pylist()]


def test_streaming_clusters_as_in_memory_and_writes_the_labels_table_only(tmp_path, corpus, encoder, in_memory):
    report = streaming(corpus, encoder, tmp_path / "out")
    files = list_data_files(str(corpus[0]))
    names = [Path(file).name for file in files]  # relative to the corpus root

    meta, rows = table_rows(tmp_path / "out")
    assert [row["row"] for row in rows] == list(range(180))
    assert [(row["source"], row["key"]) for row in rows[29:31]] == [
        (names[0], "pair-0029" if files[0].endswith(".tar") else "29"),
        (names[1], "pair-0030" if files[0].endswith(".tar") else "0"),
    ]
    # The same fit sample rows, the same captions embedded alike: the same ids, exactly.
    labelled = load_from_disk(in_memory / "dataset")
    assert [row["fine_id"] for row in rows] == labelled["fine_id"]
    assert [row["coarse_id"] for row in rows] == labelled["coarse_id"]
    assert sorted(row["row"] for row in rows if row["fine_id"] < 0) == sorted(NO_CAPTION)
    expected = read_finished_run(in_memory)[1]
    for name in ("fine_sizes", "coarse_sizes", "num_missing_captions", "fit_sample", "num_pairs"):
        assert report[name] == expected[name], name

    assert read_finished_run(tmp_path / "out")[1] == report
    assert (report["streaming"], report["num_data_files"], report["labels"]) == (True, FILES, "labels")
    assert report["labelled_copy"] is None and report["embeddings"] is None  # deleted by default
    assert meta["data_files"] == [
        {"path": name, "size": Path(file).stat().st_size, "fingerprint": fingerprint(file)}
        for file, name in zip(files, names)
    ]
    assert meta["corpus_root"] == str(corpus[0])
    assert (meta["num_rows"], meta["num_experts"], meta["clusters_settings"]) == (180, 2, report["settings"])
    # No copy, no image: the run wrote a few bytes per pair, none of them an image's.
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert sorted(path.name for path in written if path.parent == tmp_path / "out") == [
        LOCK,  # the run's lock: which process wrote the folder
        "clusters.json",
        "clusters.safetensors",
    ]
    assert all(NOT_AN_IMAGE not in path.read_bytes() for path in written)
    corpus_bytes = sum(Path(file).stat().st_size for file in files)
    assert sum(path.stat().st_size for path in written) < corpus_bytes / 20


@pytest.mark.slow
def test_a_hub_datasets_files_are_streamed_alike(tmp_path, encoder, in_memory, monkeypatch):
    """A Hub dataset repo of tar shards (on a Hub at 127.0.0.1): its data files, named by the commit they were read
    at, are clustered as the same pairs in memory. A subprocess: `datasets` reads the Hub's address at import."""
    write_tar_corpus(tmp_path / "repo" / "data")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a Hub on 127.0.0.1, and nowhere else
    with LocalHub() as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("org/corpus", repo_type="dataset")
        api.upload_folder(folder_path=tmp_path / "repo", repo_id="org/corpus", repo_type="dataset")
        flags = ["--dataset", "org/corpus", "--caption-column", "txt", "--encoder", encoder, "--streaming"]
        command = [sys.executable, str(SCRIPT), *map(str, [*FLAGS, *flags, "--output", tmp_path / "out"])]
        done = subprocess.run(command, env=hub.client_env(tmp_path / "hf"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    meta, rows = table_rows(tmp_path / "out")
    # Named relative to the repo at the commit the clustering read; their content hash as the Hub keeps it.
    assert [file["path"] for file in meta["data_files"]] == [f"data/shard-{f:02d}.tar" for f in range(6)]
    assert meta["corpus_root"].startswith("hf://datasets/org/corpus@")
    assert all(file["fingerprint"].startswith("hub:") for file in meta["data_files"]), meta["data_files"][0]
    assert (rows[0]["source"], rows[0]["key"]) == ("data/shard-00.tar", "pair-0000")
    assert [row["fine_id"] for row in rows] == load_from_disk(in_memory / "dataset")["fine_id"]


def test_an_in_memory_run_writes_the_labelled_copy_and_the_table(in_memory):
    report = read_finished_run(in_memory)[1]
    assert (report["streaming"], report["labels"], report["labelled_copy"]) == (False, "labels", "dataset")
    assert report["embeddings"] == "embeddings" and (in_memory / "embeddings" / "shard-00005.npy").is_file()
    meta, rows = table_rows(in_memory)
    labelled = load_from_disk(in_memory / "dataset")
    assert meta["data_files"] == [] and meta["num_parts"] == FILES  # one part per embedding shard
    assert [(row["source"], row["key"], row["row"]) for row in rows] == [("", str(i), i) for i in range(180)]
    assert [row["fine_id"] for row in rows] == labelled["fine_id"]
    assert [row["coarse_id"] for row in rows] == labelled["coarse_id"]


def test_each_process_embeds_its_own_files(tmp_path, encoder):
    files = list_data_files(str(write_tar_corpus(tmp_path / "corpus")))
    caption_encoder = CaptionEncoder(encoder, device="cpu")
    meta = {"embed_dim": caption_encoder.embed_dim, "data_files": [{"path": file} for file in files]}
    shards = EmbeddingShards.create(tmp_path / "embeddings", meta)
    assert embed_data_files(files, "txt", caption_encoder, shards, rank=1, world_size=2) == 3 * PER_FILE
    assert sorted(path.name for path in shards.folder.glob("*.npy")) == [f"shard-{s:05d}.npy" for s in (1, 3, 5)]
    assert shards.read_keys(3) == [f"pair-{row:04d}" for row in range(90, 120)]


def test_a_data_file_edited_in_place_since_a_finished_run_is_named_not_taken_for_clustered(tmp_path, corpus, encoder):
    """Captions rewritten in place keep a tar's size (tar pads to 10 KB records): the re-run names the file by its
    fingerprint, rather than calling the clustering up to date or relabelling what experts trained on."""
    copy = shutil.copytree(corpus[0], tmp_path / "corpus")
    streaming((copy, corpus[1]), encoder, tmp_path / "out")
    shard = sorted(copy.iterdir())[2]
    before = shard.stat().st_size
    if corpus[1] == "txt":
        rewrite_tar(shard, lambda members: [(m, d.replace(b"a", b"o") if m.name.endswith(".txt") else d)
                                            for m, d in members])  # fmt: skip
    else:
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 1  # one bit of its pages: parquet's own checksums are optional
        shard.write_bytes(bytes(data))
    assert shard.stat().st_size == before
    with pytest.raises(InputError, match=rf"holds a finished clustering of embeddings made with other settings "
                                         rf"\(data_files: .* first differing at \[2\]: {{'path': "
                                         rf"'{shard.name}', 'size': {before}, 'finger"):  # fmt: skip
        streaming((copy, corpus[1]), encoder, tmp_path / "out")


@pytest.mark.slow
def test_a_crashed_run_resumes_at_the_files_it_had_not_embedded(tmp_path, corpus, encoder, in_memory, monkeypatch):
    """Killed while embedding its third file, a run is no finished run; the re-run embeds the four files left only
    and ends with the labels of an uninterrupted run. --keep-embeddings keeps them."""
    written, write = [], EmbeddingShards.write

    def crashing_on_the_third_file(shards, shard, *args):
        if len(written) == 2:
            raise RuntimeError("injected crash")
        written.append(shard)
        write(shards, shard, *args)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(EmbeddingShards, "write", crashing_on_the_third_file)
        with pytest.raises(RuntimeError, match="injected crash"):
            streaming(corpus, encoder, out)
    with pytest.raises(InputError, match="no finished clustering run"):
        read_finished_run(out)
    embedded = {path: path.stat().st_mtime_ns for path in (out / "embeddings").glob("shard-*")}
    assert len(embedded) == 4  # two files' embeddings and keys

    def counting(shards, shard, *args):
        written.append(shard)
        write(shards, shard, *args)

    written.clear()
    monkeypatch.setattr(EmbeddingShards, "write", counting)
    report = streaming(corpus, encoder, out, "--keep-embeddings")
    assert written == [2, 3, 4, 5]
    assert {path: path.stat().st_mtime_ns for path in embedded} == embedded
    assert report["embeddings"] == "embeddings" and len(list((out / "embeddings").glob("shard-*.npy"))) == FILES
    assert [row["fine_id"] for row in table_rows(out)[1]] == load_from_disk(in_memory / "dataset")["fine_id"]
    # The same command again finds the run finished and embeds nothing.
    assert streaming(corpus, encoder, out, "--keep-embeddings") == report and written == [2, 3, 4, 5]


# float16 keeps 11 significant bits: each coordinate of a unit vector is off by at most 2**-11 of itself, so by
# Cauchy-Schwarz a similarity to a unit centroid moves by at most 2**-11 (4.9e-4), and the gap between two centres'
# similarities by twice that. A pair whose two nearest centres are closer than FLOAT16_TIE may go either way.
FLOAT16_TIE = 2 * 2**-11 + 1e-5  # plus float32 rounding (see helpers.TIE's reasoning)


def test_float16_embeddings_label_as_float32_up_to_ties(tmp_path, encoder, in_memory):
    corpus = (write_tar_corpus(tmp_path / "corpus"), "txt")
    report = streaming(corpus, encoder, tmp_path / "out", "--embeddings-dtype", "float16", "--keep-embeddings")
    assert report["settings"]["embeddings"]["dtype"] == "float16"
    assert np.load(tmp_path / "out" / "embeddings" / "shard-00000.npy").dtype == np.float16
    clusters, _ = read_finished_run(tmp_path / "out")
    assert report["fit_sample"] == read_finished_run(in_memory)[1]["fit_sample"]  # the fit read every sampled row
    fine = np.array([row["fine_id"] for row in table_rows(tmp_path / "out")[1]])
    # The float32 embeddings of the same captions, and their nearest of the float16 run's centres.
    embeddings = np.concatenate([np.load(in_memory / "embeddings" / f"shard-{s:05d}.npy") for s in range(FILES)])
    captioned = np.any(embeddings != 0, axis=1)
    assert np.array_equal(fine < 0, ~captioned)
    similarity = embeddings[captioned] @ clusters.fine_centroids.T
    nearest = similarity.argmax(axis=1)
    rows = np.arange(len(nearest))
    gaps = similarity[rows, nearest] - similarity[rows, fine[captioned]]
    assert (gaps < FLOAT16_TIE).all(), gaps.max()


def missing_caption_column(tmp_path, corpus):
    return {"--caption-column": "caption" if corpus[1] == "txt" else "text"}


def no_data_files(tmp_path, _corpus):
    (tmp_path / "empty").mkdir()
    return {"--dataset": tmp_path / "empty"}


def damaged_file(file: int, damage):
    """A copy of the corpus whose data file `file` has its bytes changed by `damage`."""

    def change(tmp_path, corpus):
        copy = tmp_path / "copy"
        copy.mkdir()
        for path in sorted(corpus[0].iterdir()):
            (copy / path.name).write_bytes(path.read_bytes())
        victim = sorted(copy.iterdir())[file]
        victim.write_bytes(damage(victim.read_bytes()))
        return {"--dataset": copy}

    return change


def cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def edited_file(file: int, tar_edit=None, parquet_edit=None):
    """A copy of the corpus whose data file `file` is rewritten: a tar shard's (member, bytes) list by `tar_edit`, a
    parquet file's table by `parquet_edit`; a case for one format only skips the other."""

    def change(tmp_path, corpus):
        edit = tar_edit if corpus[1] == "txt" else parquet_edit
        if edit is None:
            pytest.skip("a case of the other data file format")
        copy = tmp_path / "copy"
        shutil.copytree(corpus[0], copy)
        victim = sorted(copy.iterdir())[file]
        if corpus[1] == "txt":
            rewrite_tar(victim, edit)
        else:
            pq.write_table(edit(pq.read_table(victim)), victim)
        return {"--dataset": copy}

    return change


def captions_as_numbers(table):
    return table.set_column(1, "caption", pa.array(range(table.num_rows), pa.int64()))


# case: (the flags it changes, given the tmp_path and the corpus; the error line; whether work starts before it)
BAD_INPUTS = {
    "caption column not there": (missing_caption_column, r"The data files have no caption column", False),
    "no data files": (no_data_files, r"--dataset '.*empty' holds no data files \(.parquet or .tar\)", False),
    "dataset not there": (lambda t, _: {"--dataset": t / "nowhere"}, r"--dataset '.*nowhere' does not exist", False),
    "a split of local files": (lambda t, _: {"--split": "test"}, r"is local data files, which hold one split", False),
    "a negative seed": (lambda t, _: {"--seed": -1}, r"--seed must be at least 0, got -1", False),
    "first file no data file": (
        damaged_file(0, lambda data: b"garbage " * 100),
        r"data file '.*-0+\.(tar|parquet)' cannot be read",
        False,
    ),
    "a later file truncated": (
        damaged_file(3, cut_in_half),
        r"data file '.*-0+3\.(tar|parquet)' cannot be read",
        True,
    ),
    "duplicate keys in a shard": (
        edited_file(1, tar_edit=lambda members: members + members[:2]),
        r"data file '.*-0+1\.tar' holds key '.*' twice: a shard's sample keys must be unique",
        True,
    ),
    "an empty data file": (
        edited_file(2, tar_edit=lambda members: [], parquet_edit=lambda table: table.slice(0, 0)),
        r"data file '.*-0+2\.(tar|parquet)' holds no sample",
        True,
    ),
    "a caption that is not UTF-8": (
        edited_file(1, tar_edit=not_utf8),
        r"pair '.*' of data file '.*-0+1\.tar' has a caption that is not UTF-8 text",
        True,
    ),
    "a caption column of numbers": (
        edited_file(1, parquet_edit=captions_as_numbers),
        r"pair '0' of data file '.*-0+1\.parquet' has a caption of type int \('0'\): a caption is text",
        True,
    ),
    "more fine clusters than pairs": (
        lambda t, _: {"--fine-clusters": 200, "--fit-sample": 1000},
        r"needs at least 200 captioned pairs, but it samples 180: --dataset has 180 pairs",
        True,
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, corpus, encoder, capsys, case):
    change, error, work_starts = BAD_INPUTS[case]
    flags = {"--dataset": corpus[0], "--caption-column": corpus[1], "--encoder": encoder, "--output": tmp_path / "out"}
    flags |= change(tmp_path, corpus)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.run(lambda: run("--streaming", *[item for pair in flags.items() for item in pair]))
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and re.search(r"error: .*" + error, line) and len(line) <= 500, line
    if work_starts:  # found while reading the files: the embedding pass ran, the folder is no finished run
        with pytest.raises(InputError, match="no finished clustering run"):
            read_finished_run(flags["--output"])
        assert (flags["--output"] / "embeddings" / "shard-00000.npy").is_file()  # a re-run resumes from here
    else:  # checked before any work: nothing was written
        assert not Path(flags["--output"]).exists()


def test_a_json_members_field_is_clustered_as_a_caption_column(tmp_path, encoder):
    """LAION-style shards: `--caption-column json.caption` clusters each sample's `json` member's `caption` field,
    exactly as the same captions in `txt` members."""
    from modeling_mode.lib.data.data_files import write_tar_sample

    for member in ("json", "txt"):
        (tmp_path / member).mkdir()
        for shard in range(2):
            with tarfile.open(tmp_path / member / f"{shard:05d}.tar", "w") as tar:
                for row in range(shard * 60, shard * 60 + 60):
                    caption = f"a photo of a {['dog', 'car', 'tree', 'boat'][row % 4]} number {row}"
                    value = json.dumps({"caption": caption, "width": 32}) if member == "json" else caption
                    write_tar_sample(tar, {"__key__": f"p{row:04d}", "jpg": image_bytes(row), member: value.encode()})
    common = ["--streaming", "--encoder", encoder]
    as_json = run("--dataset", tmp_path / "json", "--caption-column", "json.caption", *common, "--output",
                  tmp_path / "out-json")  # fmt: skip
    as_text = run("--dataset", tmp_path / "txt", "--caption-column", "txt", *common, "--output", tmp_path / "out-txt")
    assert as_json["num_missing_captions"] == 0 and as_json["fine_sizes"] == as_text["fine_sizes"]
    _, json_rows = table_rows(tmp_path / "out-json")
    _, text_rows = table_rows(tmp_path / "out-txt")
    assert [row["fine_id"] for row in json_rows] == [row["fine_id"] for row in text_rows]
