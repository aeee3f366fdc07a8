"""Experts trained from a clustering's labels table (`train/expert.py --labels`): the original pairs joined with their
cluster ids on the fly, by row (random access) or by (data file, key) (streamed), and experts on resharded corpora."""

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from datasets import Dataset, load_from_disk
from helpers import (
    EXPERT,
    EXPERTS,
    QUIET,
    assert_same_weights,
    cluster_of,
    expert_command,
    jpeg,
    label_corpus,
    labelled_tar_corpus,
    make_pairs,
    make_tar_corpus,
    not_utf8,
    rewrite_tar,
    run_reshard,
    train_here,
)
from hub_server import LocalHub
from huggingface_hub import HfApi
from torch.utils.data import DataLoader

from modeling_mode.lib.clustering.clustered_corpus import InMemoryCorpus
from modeling_mode.lib.clustering.labels_table import finish_labels, read_meta, write_labels
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.data.pairs import PairTransform, StreamingPairs, load_pairs
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.batches import TrainingData
from modeling_mode.lib.training.outputs import is_finished
from modeling_mode.lib.training.processors import pil_image_processor
from modeling_mode.lib.training.streams import LabelledStream, worker_turns

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def pair_index(caption: str) -> int:
    """The corpus index a caption names (`helpers.caption_for`: 'cluster C pair I')."""
    return int(caption.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def tar_corpus(tmp_path_factory) -> tuple[str, list[str], str]:
    return labelled_tar_corpus(tmp_path_factory.mktemp("tar-corpus"))


def label_saved_dataset(labelled: str, original: Path, labels: Path) -> None:
    """The original pairs (the labelled copy without its id columns) and the labels table of their clustering."""
    dataset = load_from_disk(labelled)
    dataset.remove_columns(["fine_id", "coarse_id"]).save_to_disk(original)
    rows = np.arange(len(dataset))
    write_labels(labels, 0, "", [str(row) for row in rows], rows, dataset["fine_id"], dataset["coarse_id"])
    meta = {"dataset": str(original), "split": "train", "caption_column": "caption", "num_rows": len(dataset)}
    finish_labels(labels, meta | {"data_files": [], "num_experts": 2, "num_fine_clusters": 6, "clusters_settings": {}})


@pytest.mark.slow
def test_an_expert_with_labels_ends_with_the_weights_of_one_on_the_labelled_copy(tmp_path):
    labelled = make_pairs(tmp_path / "labelled")
    label_saved_dataset(labelled, tmp_path / "original", tmp_path / "labels")
    # An expert with out-of-cluster pairs and accumulation, over an epoch boundary (6 steps an epoch).
    flags = "--config tiny --cluster 1 --out-of-cluster-ratio 0.5 --batch-size 2 --gradient-accumulation-steps 2"
    flags = [*flags.split(), "--max-steps", "8", "--checkpoint-every", "3", *QUIET]
    train_here(*flags, "--dataset", labelled, "--output", tmp_path / "copy")
    joined = [*flags, *f"--dataset {tmp_path / 'original'} --labels {tmp_path / 'labels'}".split()]
    joined += ["--output", tmp_path / "run"]
    train_here(*joined, "--stop-at-step", "5")  # and resumed: the sampler's position comes back exactly
    train_here(*joined, "--resume")
    # The same computation in the same process and thread count, which could be exact; 1e-6 (far below one step's
    # change) keeps the test about the data read, not about the summation order of the kernels torch picks.
    assert_same_weights(tmp_path / "run", tmp_path / "copy", atol=1e-6)


def test_data_files_loaded_whole_are_joined_by_row(tar_corpus):
    dataset, files, labels = tar_corpus
    pairs = load_pairs(dataset)  # webdataset shards as one random-access Dataset
    coarse_ids = InMemoryCorpus.joined(pairs, dataset, "train", labels, "txt").ids("coarse_id")
    assert coarse_ids.tolist() == [cluster_of(row)[1] for row in range(len(pairs))]
    with pytest.raises(InputError, match=r"row 0 of --dataset .* is pair 's3/00028', the labels table .* 's0/00000'"):
        InMemoryCorpus.joined(pairs.select(reversed(range(len(pairs)))), dataset, "train", labels, "txt")


def stream_args(dataset, labels, **flags) -> ExpertTrainingArguments:
    flags = (
        dict(cluster="0", batch_size=2, shuffle_buffer=4, num_workers=0, image_column="jpg", caption_column="txt")
        | flags
    )
    return ExpertTrainingArguments(dataset, "-", 10, labels=labels, streaming=True, report_to="none", **flags)


def labelled_stream(args: ExpertTrainingArguments):
    stream = TrainingData(args, Accelerator(cpu=True)).labelled_stream
    stream.transform = PairTransform(pil_image_processor(30), args.image_column, args.caption_column)
    return stream


def streamed_batches(stream, epoch=0, read=0, num_workers=0) -> list[list[int]]:
    """The pairs (their corpus indices) of each batch an epoch's DataLoader gives, from batch `read` on."""
    stream.start(epoch, read)
    loader = DataLoader(stream, batch_size=stream.batch_size, drop_last=True, num_workers=num_workers, collate_fn=list)
    return [[pair_index(caption) for _, caption in batch] for batch in loader]


def test_a_streamed_expert_sees_exactly_its_clusters_pairs(tar_corpus):
    dataset, files, labels = tar_corpus
    rows = range(read_meta(labels)["num_rows"])
    for cluster in range(EXPERTS):
        stream = labelled_stream(stream_args(dataset, labels, cluster=str(cluster)))
        stream.start(0)
        seen = [pair_index(caption) for _, caption in stream]  # every pair, before the loader batches them
        assert sorted(seen) == [row for row in rows if cluster_of(row)[1] == cluster]
    # Two processes read their own data files: together, the cluster's pairs once.
    args = stream_args(dataset, labels)
    shares = [LabelledStream(args, process, 2) for process in range(2)]
    for share in shares:
        share.transform = stream.transform
        share.start(0)
    seen = [[pair_index(caption) for _, caption in share] for share in shares]
    assert sorted(seen[0] + seen[1]) == [row for row in rows if cluster_of(row)[1] == 0] and all(seen)
    # The released code's share of the other clusters' pairs: a fixed sample of them, never pairs without a cluster.
    stream = labelled_stream(stream_args(dataset, labels, out_of_cluster_ratio=0.5))
    stream.start(0)
    seen = [pair_index(caption) for _, caption in stream]
    inside = [row for row in rows if cluster_of(row)[1] == 0]
    others = set(seen) - set(inside)
    assert set(inside) <= set(seen) and len(seen) == len(set(seen)) and 0 < len(others) < len(rows) - len(inside)
    assert {cluster_of(row)[1] for row in others} == {1}


# With 2 workers: slow (worker processes; the test run right after it took ~10 s more, mostly waiting).
@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_resumed_stream_restarts_where_it_stood_without_reading_what_it_had(tmp_path, num_workers):
    files = make_tar_corpus(tmp_path / "corpus")  # its own: one of its files is spoilt below
    labels = label_corpus(files, tmp_path / "labels", str(tmp_path / "corpus"))
    stream = labelled_stream(
        stream_args(str(tmp_path / "corpus"), str(labels), cluster="all", num_workers=num_workers)
    )
    epoch = streamed_batches(stream, 1, 0, num_workers)
    assert len(epoch) == sum(stream.batch_counts()) and epoch != streamed_batches(stream, 0, 0, num_workers)
    for read in range(len(epoch) + 1):  # from every position of the epoch: the rest of the uninterrupted epoch
        assert streamed_batches(stream, 1, read, num_workers) == epoch[read:], read

    # Once the first data file worker 0 reads in epoch 1 has been trained on, a resumed stream does not open it: it is
    # unreadable now (zeros, the same size), and the stream still gives the rest of the epoch.
    order = np.random.default_rng([stream.seed, 1, 0, 0]).permutation(len(stream.worker_files(0)))
    index, file = stream.worker_files(0)[order[0]]
    read = next(
        r for r in range(len(epoch)) if worker_turns(stream.batch_counts(), r)[0][0] * 2 >= stream.run_pairs[index]
    )
    Path(file).write_bytes(bytes(Path(file).stat().st_size))
    assert streamed_batches(stream, 1, read, num_workers) == epoch[read:]
    with pytest.raises(InputError, match=f"data file '{re.escape(file)}' holds no sample"):
        streamed_batches(stream, 1, 0, num_workers)


def plain_epoch(stream, epoch: int, where=(), num_workers: int = 0) -> tuple[list[list[int]], list[tuple]]:
    """The pairs (their corpus indices) of each batch of a plain stream's epoch, started at `where` (a position), and
    the stream's position after each batch, as the run keeps them."""
    stream.start(epoch, *where)
    loader = DataLoader(stream, batch_size=stream.batch_size, drop_last=True, num_workers=num_workers, collate_fn=list)
    batches, positions = [], []
    for batch in loader:
        stream.advance(*batch[-1][2])
        batches.append([pair_index(caption) for _, caption, _ in batch])
        positions.append(stream.position())
    return batches, positions


# With 2 workers: slow (worker processes).
@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_resumed_plain_stream_restarts_where_it_stood_without_reading_what_it_had(tmp_path, num_workers):
    """Without a labels table no file's count is known before it is read: each batch says where its worker stood.
    From the position after any batch, the stream gives the rest of the uninterrupted epoch, and a data file its
    worker had finished is not opened again."""
    make_tar_corpus(tmp_path / "corpus")
    args = stream_args(str(tmp_path / "corpus"), None, cluster="all", num_workers=num_workers, shuffle_buffer=3)
    stream = TrainingData(args, Accelerator(cpu=True)).plain_stream
    stream.transform = PairTransform(pil_image_processor(30), args.image_column, args.caption_column)
    epoch, positions = plain_epoch(stream, 1, num_workers=num_workers)
    assert sorted(pair for batch in epoch for pair in batch) != list(range(29))  # drop_last: some pairs left over
    assert epoch != plain_epoch(stream, 0, num_workers=num_workers)[0]  # each epoch its own order
    for read in range(1, len(epoch) + 1):
        assert plain_epoch(stream, 1, positions[read - 1], num_workers)[0] == epoch[read:], read

    # Once worker 0 has finished the first data file it reads in epoch 1, a resumed stream does not open it: it is
    # unreadable now (zeros, the same size), and the stream still gives the rest of the epoch.
    first = stream.worker_files(0)[stream.file_order(0)[0]][1]
    read = next(r for r in range(1, len(epoch)) if positions[r - 1][0][0][0] >= 1)
    Path(first).write_bytes(bytes(Path(first).stat().st_size))
    assert plain_epoch(stream, 1, positions[read - 1], num_workers)[0] == epoch[read:]
    with pytest.raises(InputError, match=f"data file '{re.escape(first)}' holds no sample"):
        plain_epoch(stream, 1, num_workers=num_workers)


@pytest.mark.slow
def test_a_plain_streamed_expert_on_tar_shards_resumes_to_the_same_weights(tmp_path):
    dataset = tmp_path / "corpus"
    make_tar_corpus(dataset)
    flags = f"--dataset {dataset} --streaming --image-column jpg --caption-column txt --cluster all".split()
    flags += "--config tiny --batch-size 2 --shuffle-buffer 4 --max-steps 18 --checkpoint-every 4".split()
    train_here(*flags, *QUIET, "--output", tmp_path / "uninterrupted")
    train_here(*flags, *QUIET, "--output", tmp_path / "resumed", "--stop-at-step", "4")
    train_here(*flags, *QUIET, "--output", tmp_path / "resumed", "--resume")
    assert_same_weights(tmp_path / "resumed", tmp_path / "uninterrupted", atol=1e-6)  # as the --labels stream's
    state = json.loads((tmp_path / "resumed/checkpoints/step_4/trainer_state.json").read_text())
    [(epoch, read, resume_at, turn)] = state["stream_positions"]
    assert (epoch, read, turn, len(resume_at)) == (0, 4, 0, 1) and resume_at[0][1] > 0  # within its file
    state = json.loads((tmp_path / "resumed/checkpoints/step_16/trainer_state.json").read_text())
    assert state["stream_positions"][0][0] == 1  # 29 pairs make 14 batches: step 16 is in epoch 1


def test_batches_are_taken_from_the_workers_in_turn():
    assert worker_turns([3, 1, 2], 0) == ([0, 0, 0], 0)
    assert worker_turns([3, 1, 2], 2) == ([1, 1, 0], 2)
    assert worker_turns([3, 1, 2], 3) == ([1, 1, 1], 0)
    assert worker_turns([3, 1, 2], 4) == ([2, 1, 1], 2)  # worker 1 has given its only batch: worker 2's turn
    assert worker_turns([3, 1, 2], 6) == ([3, 1, 2], 0)


@pytest.mark.slow
def test_a_streamed_expert_on_tar_shards_trains_and_resumes_to_the_same_weights(tar_corpus, tmp_path):
    dataset, files, labels = tar_corpus
    flags = f"--dataset {dataset} --labels {labels} --streaming --image-column jpg --caption-column txt".split()
    flags += "--config tiny --cluster 0 --batch-size 2 --shuffle-buffer 4 --max-steps 8 --checkpoint-every 3".split()
    train_here(*flags, *QUIET, "--output", tmp_path / "uninterrupted")
    train_here(*flags, *QUIET, "--output", tmp_path / "resumed", "--stop-at-step", "3")
    train_here(*flags, *QUIET, "--output", tmp_path / "resumed", "--resume")
    # Same process and thread count, which could be exact; 1e-6 (far below one step's change) keeps the test about
    # the stream's position, not about the summation order of the kernels torch picks.
    assert_same_weights(tmp_path / "resumed", tmp_path / "uninterrupted", atol=1e-6)
    state = json.loads((tmp_path / "resumed/checkpoints/step_3/trainer_state.json").read_text())
    assert state["stream_positions"] == [[0, 3]]
    state = json.loads((tmp_path / "resumed/checkpoints/step_8/trainer_state.json").read_text())
    assert state["stream_positions"][0][0] == 1  # cluster 0's 11 pairs make 5 batches: step 8 is in epoch 1


@pytest.mark.slow
def test_an_expert_on_resharded_shards_reads_no_pair_of_another_cluster(tar_corpus, tmp_path):
    dataset, files, labels = tar_corpus
    run_reshard(dataset, labels, tmp_path / "resharded", shard_size=3)
    cluster_dir = str(tmp_path / "resharded" / "cluster-1")
    transform = PairTransform(pil_image_processor(30), "jpg", "txt")
    stream = StreamingPairs(load_pairs(cluster_dir, streaming=True), transform, None, "coarse_id", 0.0, 0, 4, 0, 1)
    seen = [pair_index(caption) for _, caption in stream]  # what the seed's loader yields on these shards
    assert sorted(seen) == [row for row in range(read_meta(labels)["num_rows"]) if cluster_of(row)[1] == 1]
    flags = f"--dataset {cluster_dir} --streaming --cluster all --image-column jpg --caption-column txt".split()
    train_here(
        *flags, "--config", "tiny", "--batch-size", "2", "--max-steps", "2", *QUIET, "--output", tmp_path / "run"
    )
    assert is_finished(tmp_path / "run")


def test_bad_input_is_one_line_and_exit_status_2(tar_corpus, tmp_path, monkeypatch, capsys):
    dataset, files, labels = tar_corpus
    other = make_tar_corpus(tmp_path / "other", shard_sizes=(3, 3))
    other_labels = label_corpus(other, tmp_path / "other-labels", str(tmp_path / "other"))
    grown = make_tar_corpus(tmp_path / "grown", shard_sizes=(7, 9))  # labelled, then a shard added
    grown_labels = label_corpus(grown, tmp_path / "grown-labels", str(tmp_path / "grown"))
    make_tar_corpus(tmp_path / "grown" / "more", shard_sizes=(2,))
    renamed = make_tar_corpus(tmp_path / "renamed", shard_sizes=(7, 9))  # one pair's key renamed: the same size
    renamed_labels = label_corpus(renamed, tmp_path / "renamed-labels", str(tmp_path / "renamed"))
    with tarfile.open(renamed[0]) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar]
    with tarfile.open(renamed[0], "w") as tar:
        for member, data in members:
            member.name = member.name.replace("00002.", "x0002.")
            tar.addfile(member, io.BytesIO(data))
    saved = make_pairs(tmp_path / "labelled")
    label_saved_dataset(saved, tmp_path / "original", tmp_path / "saved-labels")
    bigger = make_pairs(tmp_path / "bigger", n=48, clustered=False)
    streamed = ["--streaming", "--image-column", "jpg", "--caption-column", "txt"]
    cases = [
        (
            [dataset, other_labels, *streamed],
            r"'.*00002.tar' \('00002.tar' in --dataset .*\) is missing from the labels",
        ),
        ([tmp_path / "grown", grown_labels, *streamed], r"data file '.*more/00000.tar' .* is missing from the labels"),
        ([dataset, labels, *streamed[:3], "--caption-column", "text"], r"no column 'text' \(--caption-column\)"),
        ([bigger, tmp_path / "saved-labels"], r"labels 40 pairs, --dataset '.*bigger' has 48"),
        (
            [tmp_path / "original", tmp_path / "saved-labels", "--streaming"],
            r"is a saved dataset: train on it without",
        ),
        ([tmp_path / "renamed", renamed_labels, *streamed], r"data file .*00000.tar' is not the one .* other content"),
    ]
    out_of_range = r"--cluster 5: --labels '.*' has 2 clusters \(ids 0 to 1\)"  # the table's experts, not a batch
    cases += [([dataset, labels, *streamed, "--cluster", "5"], out_of_range), ([saved, tmp_path / "saved-labels",
              "--cluster", "5"], out_of_range)]  # fmt: skip
    for (corpus, table, *flags), message in cases:
        capsys.readouterr()
        argv = ["--dataset", corpus, "--labels", table, "--config", "tiny", "--cluster", "0", *flags, "--batch-size"]
        argv += ["2", "--max-steps", "2", *QUIET, "--output", tmp_path / "run", "--resume"]
        status, stderr = expert_command(monkeypatch, capsys, *argv)
        lines = [line for line in stderr if not line.startswith("train:")]  # a pair is read once the steps began
        assert status == 2 and len(lines) == 1 and lines[0] == stderr[-1], stderr
        assert re.fullmatch(f"error: .*{message}.*", lines[0]) and len(lines[0]) <= 500, lines[0]


def rewritten_shard(corpus: Path, edit) -> None:
    """Rewrite the corpus's second tar shard (`helpers.rewrite_tar`)."""
    rewrite_tar(sorted(corpus.glob("*.tar"))[1], edit)


def numbers_as_captions(corpus: Path) -> None:
    """A parquet corpus (real images) whose caption column holds integers."""
    for path in corpus.glob("*.tar"):
        path.unlink()
    images = [{"bytes": jpeg(i), "path": None} for i in range(12)]
    Dataset.from_dict({"image": images, "caption": list(range(12))}).to_parquet(corpus / "train-00000.parquet")


# case: (what it does to a copy of the tar corpus, the error line, with or without --labels)
STREAMED_BAD_INPUTS = {
    "a truncated shard": (lambda c: (s := sorted(c.glob("*.tar"))[1]).write_bytes(s.read_bytes()[:5000]),
                          r"data file '.*00001.tar' cannot be read \(ReadError: "),
    "not a tar file": (lambda c: sorted(c.glob("*.tar"))[1].write_bytes(b"garbage " * 100),
                       r"data file '.*00001.tar' cannot be read \(ReadError: invalid header\)"),
    "an empty shard": (lambda c: rewritten_shard(c, lambda members: []), r"data file '.*00001.tar' holds no sample"),
    "a key twice in a shard": (lambda c: rewritten_shard(c, lambda members: members + members[:2]),
                               r"data file '.*00001.tar' holds key 's1/00007' twice"),
    "a caption that is not UTF-8": (lambda c: rewritten_shard(c, not_utf8),
                                    r"pair 's1/00007' of data file '.*00001.tar' has a caption that is not UTF-8"),
    "a sample without its image": (lambda c: rewritten_shard(c, lambda members: members[1:]),
                                   r"pair 's1/00007' of data file '.*00001.tar' has no image in 'jpg'"),
    "a parquet caption column of numbers": (numbers_as_captions,
                                            r"pair '0' of data file '.*-00000.parquet' has a caption of type int"),
}  # fmt: skip


@pytest.mark.parametrize("case", STREAMED_BAD_INPUTS)
def test_a_streamed_experts_bad_data_is_one_line_naming_the_file_and_pair(tmp_path, monkeypatch, capsys, case):
    edit, message = STREAMED_BAD_INPUTS[case]
    corpus = tmp_path / "corpus"
    make_tar_corpus(corpus)
    edit(corpus)
    columns = ["--image-column", "image", "--caption-column", "caption"] if "parquet" in case else []
    argv = ["--streaming", "--dataset", corpus, "--image-column", "jpg", "--caption-column", "txt", *columns]
    argv += ["--config", "tiny", "--batch-size", "2", "--max-steps", "12", *QUIET, "--output", tmp_path / "run"]
    capsys.readouterr()
    status, stderr = expert_command(monkeypatch, capsys, *argv)
    lines = [line for line in stderr if not line.startswith("train:")]  # a pair is read once the steps began
    assert status == 2 and lines[-1] == stderr[-1] and "Traceback" not in "\n".join(stderr), stderr
    assert re.fullmatch(f"error: .*{message}.*", lines[-1]) and len(lines[-1]) <= 500, lines[-1]
    assert not is_finished(tmp_path / "run")


@pytest.mark.slow
def test_a_hub_datasets_shards_are_streamed_by_the_same_reader(tmp_path, monkeypatch):
    """A Hub dataset of tar shards (on a Hub at 127.0.0.1) streamed by a plain --streaming expert is read by the
    project's reader too: a truncated shard is one line naming its hf:// file, exit status 2, no finished model
    (`datasets`' webdataset loader passed over it). A subprocess: `datasets` reads the Hub's address at import."""
    corpus = tmp_path / "repo" / "data"
    make_tar_corpus(corpus)
    (shard := sorted(corpus.glob("*.tar"))[1]).write_bytes(shard.read_bytes()[:5000])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a Hub on 127.0.0.1, and nowhere else
    with LocalHub() as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("org/corpus", repo_type="dataset")
        api.upload_folder(folder_path=tmp_path / "repo", repo_id="org/corpus", repo_type="dataset")
        argv = ["--streaming", "--dataset", "org/corpus", "--image-column", "jpg", "--caption-column", "txt"]
        argv += ["--config", "tiny", "--batch-size", "2", "--max-steps", "12", *QUIET, "--output", tmp_path / "run"]
        command = [sys.executable, str(EXPERT), *map(str, argv)]
        done = subprocess.run(command, env=hub.client_env(tmp_path / "hf"), capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.fullmatch(r"error: data file 'hf://datasets/org/corpus@\w+/data/00001.tar' cannot be read .*", lines[0])
    assert not is_finished(tmp_path / "run")
