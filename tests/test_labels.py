"""The labels table: one parquet part per data file (or embedding shard), complete once labels.json is written."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_mode.lib.clustering.labels_table import (
    LabelsTable,
    check_labels_match,
    clear_labels,
    describe_files,
    finish_labels,
    labels_for,
    part_path,
    read_labels,
    read_meta,
    write_labels,
)
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.data.data_files import fingerprint


@pytest.fixture
def corpus(tmp_path):
    """Two data files (their bytes do not matter here, only their names, sizes and content) and a table labelling them,
    the files named relative to the corpus root."""
    files = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    for file, size in zip(files, (10, 20), strict=True):
        open(file, "wb").write(b"x" * size)
    folder = tmp_path / "labels"
    write_labels(folder, 0, "a.tar", ["k0", "k1"], [0, 1], [3, -1], [1, -1])
    write_labels(folder, 1, "b.tar", ["k2"], [2], [0], [0])
    return folder, files


NAMES = ["a.tar", "b.tar"]


def meta_of(files, num_rows=3):
    return {
        "dataset": "corpus",
        "split": "train",
        "caption_column": "txt",
        "num_rows": num_rows,
        "data_files": describe_files(files, NAMES[: len(files)]),
        "num_experts": 2,
        "num_fine_clusters": 4,
        "clusters_settings": {},
    }


def test_a_table_is_complete_once_finished_and_reads_back(corpus):
    folder, files = corpus
    with pytest.raises(InputError, match="holds no complete labels table"):
        read_meta(folder)
    meta = finish_labels(folder, meta_of(files))
    assert meta["num_parts"] == 2 and meta["data_files"] == [
        {"path": "a.tar", "size": 10, "fingerprint": fingerprint(files[0])},
        {"path": "b.tar", "size": 20, "fingerprint": fingerprint(files[1])},
    ]
    found, parts = read_labels(folder)
    assert found == meta
    rows = [row for part in parts for row in part.to_pylist()]
    assert rows == [
        {"source": "a.tar", "key": "k0", "row": 0, "fine_id": 3, "coarse_id": 1},
        {"source": "a.tar", "key": "k1", "row": 1, "fine_id": -1, "coarse_id": -1},
        {"source": "b.tar", "key": "k2", "row": 2, "fine_id": 0, "coarse_id": 0},
    ]
    assert labels_for(folder, "b.tar") == {"k2": 0}
    with pytest.raises(InputError, match="'elsewhere.tar' is not in the labels table"):
        labels_for(folder, "elsewhere.tar")
    clear_labels(folder)
    assert not list(folder.iterdir())


def test_finishing_refuses_missing_parts_or_rows(corpus):
    folder, files = corpus
    with pytest.raises(ValueError, match="holds 3 labelled pairs, the corpus 4"):
        finish_labels(folder, meta_of(files, num_rows=4))
    (folder / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match="not one per data file"):
        finish_labels(folder, meta_of(files))


def test_a_saved_dataset_is_labelled_by_row_index(tmp_path):
    folder = tmp_path / "labels"
    write_labels(folder, 0, "", ["0", "1"], [0, 1], [1, 0], [1, 0])
    write_labels(folder, 1, "", ["2"], [2], [1], [1])
    meta = {"dataset": "saved", "split": "train", "caption_column": "caption", "num_rows": 3, "data_files": []}
    meta = finish_labels(folder, meta | {"num_experts": 2, "num_fine_clusters": 2, "clusters_settings": {}})
    assert labels_for(folder, "") == {"0": 1, "1": 0, "2": 1}
    check_labels_match(meta, "saved", "train", [], [], num_rows=3)
    with pytest.raises(InputError, match="labels 3 pairs, --dataset 'saved' has 4"):
        check_labels_match(meta, "saved", "train", [], [], num_rows=4)


def test_a_table_of_another_corpus_is_refused(corpus, tmp_path):
    folder, files = corpus
    meta = finish_labels(folder, meta_of(files))
    check_labels_match(meta, "corpus", "train", files, NAMES)
    with pytest.raises(InputError, match="does not label split 'test'"):
        check_labels_match(meta, "corpus", "test", files, NAMES)
    with pytest.raises(InputError, match="was made from data files"):
        check_labels_match(meta, "saved", "train", [], [], num_rows=3)
    new = str(tmp_path / "c.tar")
    open(new, "wb").write(b"y")
    with pytest.raises(InputError, match=r"c.tar' \('c.tar' in --dataset 'corpus'\) is missing from the labels table"):
        check_labels_match(meta, "corpus", "train", [*files, new], [*NAMES, "c.tar"])
    with pytest.raises(InputError, match="labels other data files too"):
        check_labels_match(meta, "corpus", "train", files[:1], NAMES[:1])
    open(files[1], "r+b").write(b"y")  # one byte rewritten in place: as many bytes, other content
    with pytest.raises(InputError, match="b.tar' is not the one the labels table .* as many bytes, other content"):
        check_labels_match(meta, "corpus", "train", files, NAMES)
    open(files[1], "ab").write(b"grown")
    with pytest.raises(InputError, match="b.tar' has 25 bytes but had 20"):
        check_labels_match(meta, "corpus", "train", files, NAMES)


def test_a_fingerprint_samples_a_big_file_and_reads_all_of_a_small_one(tmp_path):
    """Up to 1.1 MiB a file is hashed whole; above, its first and last blocks and 16 between (what a 500 MB shard
    costs: 1.1 MiB read, not 500 MB). A change in a sampled block, or of the size, changes it."""
    small, big = tmp_path / "small.tar", tmp_path / "big.tar"
    small.write_bytes(bytes(1 << 20))
    big.write_bytes(bytes(10 << 20))
    before = fingerprint(str(small)), fingerprint(str(big))
    with open(small, "r+b") as stream:
        stream.seek(700_000)
        stream.write(b"edit")
    with open(big, "r+b") as stream:
        stream.seek((10 << 20) - 1)  # in the last block
        stream.write(b"!")
    assert fingerprint(str(small)) != before[0] and fingerprint(str(big)) != before[1]
    big.write_bytes(bytes((10 << 20) + 1))
    assert fingerprint(str(big)) != before[1]


def edited_meta(folder, num_parts=None, **first_file):
    """labels.json with `num_parts` or fields of its first data file changed, as a hand edit would."""
    meta = json.loads((folder / "labels.json").read_text())
    meta["data_files"][0].update(first_file)
    meta["num_parts"] = num_parts or meta["num_parts"]
    (folder / "labels.json").write_text(json.dumps(meta))


def edited(folder, part: int, column: str, row: int, value):
    """The table with one value of one part changed, as a hand edit would."""
    table = pq.read_table(part_path(folder, part))
    values = table[column].to_pylist()
    values[row] = value
    changed = pa.array(values, table[column].type)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, changed), part_path(folder, part))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: (f / "labels.json").write_text('{"dataset": "corpus", "split"'), r"labels.json is not valid JSON"),
        (lambda f: (f / "labels.json").write_text('{"dataset": "corpus"}'), r"lacks the fields \['split', "),
        (lambda f: (f / "part-00001.parquet").unlink(), r"part-00001.parquet is missing"),
        (lambda f: (f / "part-00001.parquet").write_bytes(b"PAR1 cut"), r"part-00001.parquet cannot be read"),
        (lambda f: edited(f, 0, "coarse_id", 0, 7), r"part-00000.parquet row 0 \(key 'k0'\): fine id 3, coarse id 7 "),
        (lambda f: edited(f, 1, "fine_id", 0, 99), r"part-00001.parquet row 0 \(key 'k2'\): fine id 99, coarse id 0"),
        (lambda f: edited(f, 1, "coarse_id", 0, -3), r"row 0 \(key 'k2'\): fine id 0, coarse id -3 outside"),
        (lambda f: edited(f, 0, "coarse_id", 1, 0), r"row 1 \(key 'k1'\): fine id -1, coarse id 0 outside"),
        (
            lambda f: edited(f, 1, "fine_id", 0, 3),
            r"part-00001.parquet row 0: fine cluster 3 in coarse cluster 0, else",
        ),
        (lambda f: edited(f, 0, "key", 1, "k0"), r"part-00000.parquet holds key 'k0' twice"),
        (lambda f: edited_meta(f, num_parts=1), r"labels.json lists 2 data files but 1 parts"),
        (lambda f: edited(f, 1, "source", 0, "a.tar"), r"part-00001.parquet labels pairs of \['a.tar'\], not of its"),
        (lambda f: edited_meta(f, path="/etc/hostname"), r"data file 0 is named '/etc/hostname', and it is an absol"),
        (lambda f: edited_meta(f, path="../../x.tar"), r"data file 0 is named '../../x.tar', and it climbs out"),
        (lambda f: edited_meta(f, path="https://example.com/x.tar"), r"data file 0 is named '.*', and it is a URL"),
        (lambda f: edited_meta(f, fingerprint=None), r"its data_files \(\[\{path, size, fingerprint\}\]\)"),
    ],
)
def test_a_table_is_checked_whole_before_any_use(corpus, edit, message):
    """A labels table travels (pushed, downloaded): one damaged or edited by hand is refused, naming the file and
    the first bad row, before anything reads it."""
    folder, files = corpus
    finish_labels(folder, meta_of(files))
    LabelsTable(folder)  # as written: whole and consistent
    edit(folder)
    with pytest.raises(InputError, match=message):
        LabelsTable(folder)
