"""Data files of a web-scale corpus (webdataset tar shards, parquet files), read a file and a few columns at a time."""

import json
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_mode.lib.data import load_pairs
from modeling_mode.lib.data_files import caption_of, columns_of, list_data_files, read_samples, write_tar_sample
from modeling_mode.lib.errors import InputError


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
