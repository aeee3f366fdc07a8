"""Data files of a web-scale corpus (webdataset tar shards, parquet files), read a file and a few columns at a time."""

import io
import json
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import QUIET, expert_command, jpeg, train_here
from PIL import Image as PILImage

from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.data.data_files import caption_of, columns_of, list_data_files, read_samples, write_tar_sample
from modeling_mode.lib.data.pairs import check_data_file_columns, load_pairs
from modeling_mode.lib.training.outputs import is_finished


def write_shard(path, keys):
    with tarfile.open(path, "w") as tar:
        for key in keys:
            write_tar_sample(tar, {"__key__": key, "jpg": b"\xff\xd8" + key.encode(), "txt": f"a {key}".encode()})


def test_tar_shards_give_webdataset_keys_and_only_the_asked_members(tmp_path):
    (tmp_path / "part").mkdir()
    write_shard(tmp_path / "part" / "00001.tar", ["c", "d"])
    write_shard(tmp_path / "00000.tar", ["a", "b"])
    files = list_data_files(str(tmp_path))
    assert [f.rsplit("/", 1)[-1] for f in files] == ["00000.tar", "00001.tar"]  # sorted, at any depth
    captions = list(read_samples(files[0], ["txt"]))
    assert captions == [{"__key__": "a", "txt": b"a a"}, {"__key__": "b", "txt": b"a b"}]  # no image bytes held
    whole = list(read_samples(files[1]))
    assert whole[1] == {"__key__": "d", "jpg": b"\xff\xd8d", "txt": b"a d"}


def test_a_dataset_may_name_its_files_as_open_clip_and_webdataset_do(tmp_path):
    """--dataset as one data file, a brace pattern (`x-{00000..00099}.tar`, `x-{a,b}.tar`) or a glob."""
    for shard in range(4):
        write_shard(tmp_path / f"shard-{shard:02d}.tar", [f"k{shard}-{i}" for i in range(3)])
    names = lambda files: [Path(file).name for file in files]  # noqa: E731
    assert names(list_data_files(str(tmp_path / "shard-{01..03}.tar"))) == ["shard-01.tar", "shard-02.tar",
                                                                             "shard-03.tar"]  # fmt: skip
    assert names(list_data_files(str(tmp_path / "shard-{02,00}.tar"))) == ["shard-02.tar", "shard-00.tar"]
    assert names(list_data_files(str(tmp_path / "shard-0[13].tar"))) == ["shard-01.tar", "shard-03.tar"]
    assert names(list_data_files(str(tmp_path / "shard-02.tar"))) == ["shard-02.tar"]
    pairs = load_pairs(str(tmp_path / "shard-{00..01}.tar"))  # datasets' webdataset loader, on those files
    assert sorted(pairs["__key__"]) == [f"k{shard}-{i}" for shard in range(2) for i in range(3)]
    with pytest.raises(InputError, match=r"names 1 data files that do not exist, e.g. '.*shard-04.tar'"):
        list_data_files(str(tmp_path / "shard-{00..04}.tar"))
    with pytest.raises(InputError, match=r"matches no data file"):
        load_pairs(str(tmp_path / "other-*.tar"))


def test_a_field_of_a_json_member_is_a_column_laion_style(tmp_path):
    """`--caption-column json.caption`: the `caption` field of each sample's `json` member, as LAION shards hold it."""
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for key, meta in [("a", {"caption": "a dog", "width": 4}), ("b", {"caption": ["a pup", "puppy"]}), ("c", {})]:
            write_tar_sample(tar, {"__key__": key, "jpg": b"\xff\xd8", "json": json.dumps(meta).encode()})
    file = str(tmp_path / "00000.tar")
    assert {"json.caption", "json.width"} <= set(columns_of(file))
    captions = [caption_of(sample.get("json.caption")) for sample in read_samples(file, ["json.caption"])]
    assert captions == ["a dog", ["a pup", "puppy"], None]  # the field missing: no caption
    with tarfile.open(tmp_path / "00001.tar", "w") as tar:
        write_tar_sample(tar, {"__key__": "d", "jpg": b"\xff\xd8", "json": b"[1, 2]"})
    with pytest.raises(InputError, match=r"pair 'd': its 'json' member is no JSON object \('json.caption'\)"):
        list(read_samples(str(tmp_path / "00001.tar"), ["json.caption"]))


def test_parquet_reads_only_the_asked_columns_keyed_by_row(tmp_path):
    pq.write_table(pa.table({"caption": ["x", None], "image": [b"1", b"2"]}), tmp_path / "train.parquet")
    (file,) = list_data_files(str(tmp_path))
    assert list(read_samples(file, ["caption"])) == [
        {"__key__": "0", "caption": "x"},
        {"__key__": "1", "caption": None},
    ]
    with pytest.raises(InputError, match=r"has no column \['text'\]"):
        list(read_samples(file, ["text"]))


def test_captions_decode_text_and_json_lists():
    assert caption_of(b"a dog") == "a dog"
    assert caption_of(b'["a dog", "a pup"]') == ["a dog", "a pup"]
    assert caption_of("as read") == "as read" and caption_of(None) is None
    assert caption_of(["a dog", None]) == ["a dog", None]  # one of its captions missing


@pytest.mark.parametrize(
    "value, message",
    [
        (b"\xff\xfe a dog", "pair 'k' has a caption that is not UTF-8 text"),
        (7, "pair 'k' has a caption of type int ('7'): a caption is text"),
        (b'{"caption": "a dog"}', None),  # a JSON object is text: its own field is named elsewhere (issue 21)
        (["a dog", 3], "pair 'k' has a caption of type list"),
    ],
)
def test_a_caption_that_is_no_text_is_refused_naming_its_pair(value, message):
    if message is None:
        assert caption_of(value, "pair 'k'") == '{"caption": "a dog"}'
        return
    with pytest.raises(InputError, match=re.escape(message)):
        caption_of(value, "pair 'k'")


def test_bad_corpora_are_named(tmp_path):
    with pytest.raises(InputError, match="holds no data files"):
        list_data_files(str(tmp_path))
    (tmp_path / "broken.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(InputError, match="broken.tar' cannot be read"):
        list(read_samples(str(tmp_path / "broken.tar"), ["txt"]))
    write_shard(tmp_path / "cut.tar", ["a", "b"])
    whole = (tmp_path / "cut.tar").read_bytes()
    # Cut within a member of "a", right after "a" (two members of a header and a data block each), within a header.
    for end in (1700, 2048, 2100):
        (tmp_path / "cut.tar").write_bytes(whole[:end])
        with pytest.raises(InputError, match="cut.tar' cannot be read .*(end-of-archive|unexpected end of data)"):
            list(read_samples(str(tmp_path / "cut.tar"), ["txt"]))
    (tmp_path / "cut.tar").unlink()
    pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"mixes data file formats \['.parquet', '.tar'\]"):
        list_data_files(str(tmp_path))


def write_members(shard, members: list[tuple[str, bytes]]) -> None:
    """A tar shard of exactly these (name, bytes) members, names as given."""
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def train_refusal(monkeypatch, capsys, dataset, *flags) -> str:
    """The one line with which train/expert.py --streaming refuses `dataset`, exit status 2, before any training."""
    output = Path(dataset).parent / "run"
    status, stderr = expert_command(monkeypatch, capsys, "--dataset", dataset, "--streaming", "--config", "tiny",
                                    "--max-steps", 2, "--output", output, *QUIET, *flags)  # fmt: skip
    assert status == 2 and len(stderr) == 1 and stderr[0].startswith("error: "), stderr
    assert not output.exists()
    return stderr[0]


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../escape/00099.jpg", "it climbs out of the folder the shard is extracted into (..)"),
        ("/abs/00099.jpg", "it is an absolute path"),
        ("part\\00099.jpg", "it is not in POSIX form (a backslash)"),
    ],
)
def test_a_member_that_would_land_outside_the_shard_is_refused_by_file_and_member(tmp_path, monkeypatch, capsys,
                                                                                   name, why):  # fmt: skip
    (tmp_path / "corpus").mkdir()
    shard = tmp_path / "corpus" / "00000.tar"
    write_members(shard, [(name, b"\xff\xd8"), (name.replace(".jpg", ".txt"), b"a caption")])
    error = train_refusal(monkeypatch, capsys, tmp_path / "corpus")
    assert error.startswith(f"error: data file {str(shard)!r} holds the member {name!r}: {why}. A shard's members")


def test_a_link_out_of_the_dataset_folder_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    write_shard(tmp_path / "elsewhere.tar", ["x"])  # another corpus
    (tmp_path / "corpus").mkdir()
    write_shard(tmp_path / "corpus" / "00000.tar", ["a", "b"])
    (tmp_path / "corpus" / "00001.tar").symlink_to(tmp_path / "elsewhere.tar")
    error = train_refusal(monkeypatch, capsys, tmp_path / "corpus")
    assert "'00001.tar' is a link to " in error and "elsewhere.tar', outside the folder" in error
    (tmp_path / "corpus" / "00001.tar").unlink()
    (tmp_path / "corpus" / "more").symlink_to(tmp_path)  # a folder: never walked into
    with pytest.raises(InputError, match=r"'more' is a link to a folder"):
        list_data_files(str(tmp_path / "corpus"))
    (tmp_path / "corpus" / "more").unlink()
    (tmp_path / "corpus" / "copy.tar").symlink_to("00000.tar")  # inside the folder: read as it is
    assert [Path(file).name for file in list_data_files(str(tmp_path / "corpus"))] == ["00000.tar", "copy.tar"]


def test_an_image_column_of_another_type_is_refused_up_front(tmp_path, monkeypatch, capsys):
    (tmp_path / "corpus").mkdir()
    file = tmp_path / "corpus" / "train.parquet"
    pq.write_table(pa.table({"image": [7, 8], "caption": ["a", "b"]}), file)
    error = train_refusal(monkeypatch, capsys, tmp_path / "corpus")
    assert f"Column 'image' (--image-column) of data file {str(file)!r} holds int64, not images" in error


def test_a_column_of_alternatives_takes_the_first_member_present_as_webdataset_does(tmp_path):
    """`--image-column 'jpg;png'`: a sample's `jpg`, else its `png` (webdataset's `getfirst`)."""
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for sample in [{"__key__": "a", "jpg": b"J", "txt": b"a"}, {"__key__": "b", "png": b"P", "txt": b"b"},
                       {"__key__": "c", "png": b"P", "jpg": b"J", "txt": b"c"}]:  # fmt: skip
            write_tar_sample(tar, sample)
    file = str(tmp_path / "00000.tar")
    check_data_file_columns(file, "jpg;png", "txt")
    samples = list(read_samples(file, ["jpg;png", "txt"]))
    assert [(s["__key__"], s["jpg;png"]) for s in samples] == [("a", b"J"), ("b", b"P"), ("c", b"J")]
    assert all(set(sample) == {"__key__", "jpg;png", "txt"} for sample in samples)
    pq.write_table(pa.table({"png": [b"P"], "caption": ["x"]}), tmp_path / "train.parquet")  # a column's alternatives
    assert [s["jpg;png"] for s in read_samples(str(tmp_path / "train.parquet"), ["jpg;png"])] == [b"P"]
    with pytest.raises(InputError, match=r"The dataset has no column 'webp;gif' \(--image-column\)"):
        check_data_file_columns(file, "webp;gif", "txt")


def test_an_expert_streams_a_shard_of_jpegs_and_pngs_with_image_column_jpg_or_png(tmp_path):
    (tmp_path / "corpus").mkdir()
    with tarfile.open(tmp_path / "corpus" / "00000.tar", "w") as tar:
        for index in range(8):
            image = jpeg(index)
            if index % 2:  # every other pair's image is a PNG
                buffer = io.BytesIO()
                PILImage.open(io.BytesIO(image)).save(buffer, format="PNG")
                image = buffer.getvalue()
            write_tar_sample(tar, {"__key__": f"{index:05d}", "jpg" if index % 2 == 0 else "png": image,
                                   "txt": f"a photo of pair {index}".encode()})  # fmt: skip
    output = tmp_path / "run"
    train_here("--dataset", tmp_path / "corpus", "--streaming", "--config", "tiny", "--image-column", "jpg;png",
               "--caption-column", "txt", "--max-steps", 1, "--batch-size", 8, "--output", output, *QUIET,
               "--warmup-steps", 0)  # fmt: skip
    assert is_finished(output)
