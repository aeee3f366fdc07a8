"""Resharding (train/reshard.py): each coarse cluster's pairs to its own webdataset shards, in one resumable pass.

Corpora are written as a clustering would leave them: data files (tar shards, parquet files) and a labels table
(`modeling_mode.lib.clustering.labels_table`) of made-up cluster ids; the tar corpus is helpers.make_tar_corpus's,
which tests/test_training_labels.py uses too.
"""

import io
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, Image, Sequence, Value
from helpers import (
    EXPERTS,
    caption_for,
    cluster_of,
    label_corpus,
    labelled_tar_corpus,
    launch_two_cpu_processes,
    make_tar_corpus,
    run_reshard,
)
from PIL import Image as PILImage

from modeling_mode.lib.clustering.labels_table import LabelsTable
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.files import LOCK, writing_lock
from modeling_mode.lib.data.data_files import list_data_files, read_samples
from modeling_mode.lib.reshard.outputs import MANIFEST, check_finished_reshard, fine_ids
from modeling_mode.lib.reshard.run import ShardPlan

REPO = Path(__file__).resolve().parents[1]
RESHARD = REPO / "train/reshard.py"


def make_parquet_corpus(folder: Path, file_sizes=(6, 7)) -> list[str]:
    """Parquet files as `datasets` writes them: PNG images ({"bytes", "path"}) and lists of captions."""
    folder.mkdir(parents=True)
    features = Features({"image": Image(), "caption": Sequence(Value("string"))})
    index = 0
    for number, size in enumerate(file_sizes):
        rows = range(index, index + size)
        images = [PILImage.fromarray(np.full((20, 20, 3), i, dtype=np.uint8)) for i in rows]
        captions = [[caption_for(i), f"pair {i}, another caption"] if caption_for(i).strip() else [] for i in rows]
        Dataset.from_dict({"image": images, "caption": captions}, features=features).to_parquet(
            folder / f"train-{number:05d}.parquet"
        )
        index += size
    return list_data_files(str(folder))


def expected_keys(files: list[str], cluster: int) -> list[str]:
    """The output keys of cluster `cluster`'s pairs, in corpus order."""
    keys, row = [], 0
    for index, file in enumerate(files):
        for sample in read_samples(file, [] if file.endswith(".parquet") else ["txt"]):
            if cluster_of(row)[1] == cluster:
                keys.append(f"{index:05d}/{sample['__key__']}")
            row += 1
    return keys


def shards_of(output: Path, cluster: int) -> list[list[dict]]:
    return [list(read_samples(str(path))) for path in sorted((output / f"cluster-{cluster}").glob("*.tar"))]


def output_files(output: Path) -> list[Path]:
    """A reshard's files, relative to its folder: all but its lock, which names the process that wrote them."""
    return sorted(path.relative_to(output) for path in output.rglob("*") if path.is_file() and path.name != LOCK)


@pytest.fixture(scope="module")
def tar_corpus(tmp_path_factory) -> tuple[str, list[str], str]:
    return labelled_tar_corpus(tmp_path_factory.mktemp("tar-corpus"))


def test_each_clusters_shards_hold_exactly_its_pairs_with_their_members(tar_corpus, tmp_path):
    dataset, files, labels = tar_corpus
    manifest = run_reshard(dataset, labels, tmp_path / "out", shard_size=4)
    sources = {sample["__key__"]: sample for file in files for sample in read_samples(file)}
    row_of = {key: row for row, key in enumerate(sources)}
    for cluster in range(EXPERTS):
        shards = shards_of(tmp_path / "out", cluster)
        samples = [sample for shard in shards for sample in shard]
        assert [sample["__key__"] for sample in samples] == expected_keys(files, cluster)
        assert [len(shard) for shard in shards[:-1]] == [4] * (len(shards) - 1) and 0 < len(shards[-1]) <= 4
        for sample in samples:
            source = sources[sample["__key__"].split("/", 1)[1]]
            assert sample.keys() == source.keys()  # the members, as they were: the ids are beside the shards
            assert sample["jpg"] == source["jpg"] and sample["txt"] == source["txt"]
        ids = np.concatenate([fine_ids(str(tmp_path / "out"), cluster, s) for s in range(len(shards))])
        assert ids.tolist() == [cluster_of(row_of[s["__key__"].split("/", 1)[1]])[0] for s in samples]
        assert manifest["clusters"][str(cluster)] == {"pairs": len(samples), "shards": len(shards)}
    without = sum(cluster_of(row)[1] < 0 for row in range(len(sources)))
    assert manifest["finished"] and manifest["pairs_without_cluster"] == without > 0
    assert json.loads((tmp_path / "out" / MANIFEST).read_text()) == manifest
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*") if path.name != LOCK}
    assert run_reshard(dataset, labels, tmp_path / "out", shard_size=4) == manifest  # finished: nothing rewritten
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*") if path.name != LOCK} == before
    with pytest.raises(InputError, match=r"reshard made with other settings \(shard_size: 4 there, 5 now\): give"):
        run_reshard(dataset, labels, tmp_path / "out", shard_size=5)


def test_parquet_pairs_become_image_and_caption_members_that_datasets_reads(tmp_path):
    files = make_parquet_corpus(tmp_path / "corpus")
    labels = label_corpus(files, tmp_path / "labels", str(tmp_path / "corpus"))
    run_reshard(str(tmp_path / "corpus"), str(labels), tmp_path / "out", shard_size=3)
    (samples,) = [[s for shard in shards_of(tmp_path / "out", 1) for s in shard]]
    assert [s["__key__"] for s in samples] == expected_keys(files, 1)
    assert {name for s in samples for name in s} == {"__key__", "png", "json"}
    row = int(samples[0]["__key__"].split("/")[1])  # the first file's: its rows are the corpus's
    assert json.loads(samples[0]["json"]) == [caption_for(row), f"pair {row}, another caption"]
    assert PILImage.open(io.BytesIO(samples[0]["png"])).getpixel((0, 0)) == (row, row, row)

    from datasets import load_dataset  # the resharded cluster, as an expert streams it

    stream = load_dataset(str(tmp_path / "out" / "cluster-1"), split="train", streaming=True)
    assert [e["__key__"] for e in stream] == [s["__key__"] for s in samples]


def test_a_killed_reshard_resumes_and_ends_identical(tar_corpus, tmp_path):
    dataset, files, labels = tar_corpus
    run_reshard(dataset, labels, tmp_path / "uninterrupted", shard_size=3)
    finished = []

    def crash_after_three(path):  # the fault hook: the run dies right after its third complete shard
        finished.append(path)
        if len(finished) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reshard(dataset, labels, tmp_path / "killed", crash_after_three, shard_size=3)
    killed = tmp_path / "killed"
    assert not json.loads((killed / MANIFEST).read_text()).get("finished")
    cluster = next(path.parent for path in finished)  # an expert on a cluster's shards, while some are missing
    with pytest.raises(InputError, match=rf"--dataset '{cluster}' is a cluster of the reshard .* not finished"):
        check_finished_reshard(str(cluster))
    assert {p for p in killed.rglob("*.tar")} == set(finished)  # a shard under its own name is complete
    kept = {path: path.stat().st_mtime_ns for path in finished}
    rewritten = []
    run_reshard(dataset, labels, killed, rewritten.append, shard_size=3)
    assert {path: path.stat().st_mtime_ns for path in finished} == kept and not set(rewritten) & set(finished)
    uninterrupted = tmp_path / "uninterrupted"
    names = output_files(uninterrupted)
    assert output_files(killed) == names  # no scratch
    for name in names:
        assert (killed / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    check_finished_reshard(str(cluster))  # finished now: read as any data files


@pytest.mark.slow
def test_two_processes_write_disjoint_shards_and_the_same_bytes_as_one(tar_corpus, tmp_path):
    dataset, files, labels = tar_corpus
    run_reshard(dataset, labels, tmp_path / "one", shard_size=3)
    table = LabelsTable(labels)
    plan = ShardPlan.from_table(table, 3)
    shares = [plan.shards_of_process(process, 2) for process in range(2)]
    assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == plan.all_shards()
    flags = ["--dataset", dataset, "--labels", labels, "--shard-size", 3, "--output", tmp_path / "two"]
    done = launch_two_cpu_processes(RESHARD, *flags, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for process in range(2):
        assert f"Process {process} of 2 writes {len(shares[process])} of the {len(plan.all_shards())}" in done.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    names = output_files(one)
    assert output_files(two) == names  # no scratch left
    for name in names:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


def reshard_command(monkeypatch, capsys, *argv) -> tuple[int, list[str]]:
    """train/reshard.py run as a command (its `__main__` block) in this process: its exit status and stderr lines."""
    capsys.readouterr()  # what ran before: not this command's
    monkeypatch.setattr(sys, "argv", [str(RESHARD), *map(str, argv)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(RESHARD), run_name="__main__")
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_and_exit_status_2_before_anything_is_written(tar_corpus, tmp_path, monkeypatch, capsys):
    dataset, files, labels = tar_corpus
    other = make_tar_corpus(tmp_path / "other", shard_sizes=(3, 3))  # another corpus, and its table
    other_labels = label_corpus(other, tmp_path / "other-labels", str(tmp_path / "other"))
    grown = make_tar_corpus(tmp_path / "grown", shard_sizes=(7, 9))  # labelled, then a shard added
    grown_labels = label_corpus(grown, tmp_path / "grown-labels", str(tmp_path / "grown"))
    make_tar_corpus(tmp_path / "grown" / "more", shard_sizes=(2,))
    parquet = make_parquet_corpus(tmp_path / "parquet")
    parquet_labels = label_corpus(parquet, tmp_path / "parquet-labels", str(tmp_path / "parquet"))
    edited = tmp_path / "edited-labels"  # the corpus's own table, one coarse id changed by hand
    shutil.copytree(labels, edited)
    part = pq.read_table(edited / "part-00000.parquet")
    coarse = part["coarse_id"].to_pylist()
    coarse[0] = 7
    part = part.set_column(part.schema.get_field_index("coarse_id"), "coarse_id", pa.array(coarse, pa.int32()))
    pq.write_table(part, edited / "part-00000.parquet")
    cases = [
        (dataset, edited, [], r"part-00000.parquet row 0 \(key 's0/00000'\): fine id \d+, coarse id 7 outside"),
        (dataset, other_labels, [], r"'.*00002.tar' \('00002.tar' in --dataset .*\) is missing from the labels"),
        (str(tmp_path / "grown"), grown_labels, [], r"data file '.*more/00000.tar' .* is missing from the labels"),
        (str(tmp_path / "parquet"), parquet_labels, ["--caption-column", "text"], r"no column 'text' \(--caption"),
        (dataset, tmp_path / "parquet", [], r"holds no complete labels table"),
        (dataset, labels, ["--shard-size", "0"], r"--shard-size must be at least 1, got 0"),
        # The output where the corpus's next listing would take its shards for data files: in its folder, by pattern.
        (dataset, labels, ["--output", f"{dataset}/resharded"], r"--output '.*/resharded' is inside --dataset"),
        (f"{dataset}/*.tar", labels, ["--output", f"{dataset}/resharded"], r"is inside --dataset '.*/\*\.tar'"),
    ]
    for corpus, table, flags, message in cases:
        output = Path(flags[flags.index("--output") + 1]) if "--output" in flags else tmp_path / "out"
        argv = ["--dataset", corpus, "--labels", table, "--output", tmp_path / "out", *flags]  # the last --output wins
        status, stderr = reshard_command(monkeypatch, capsys, *argv)
        assert status == 2 and len(stderr) == 1, stderr
        assert re.fullmatch(f"error: .*{message}.*", stderr[0]) and len(stderr[0]) <= 500, stderr[0]
        assert not output.exists()
    busy = tmp_path / "busy"
    with writing_lock(busy):  # another run is writing there
        status, stderr = reshard_command(monkeypatch, capsys, "--dataset", dataset, "--labels", labels,
                                         "--output", busy)  # fmt: skip
    assert status == 2 and len(stderr) == 1, stderr
    refusal = r"error: --output '.*busy' is being written by process \d+ on .*, started .*: wait for it to end, or"
    assert re.fullmatch(refusal + r" give another --output\.", stderr[0]), stderr[0]
    assert not busy.exists()  # the other run wrote nothing: its lock went with it
