"""A web-scale corpus as its data files (parquet files or webdataset tar shards), read one file at a time.

Web corpora (the paper's 400M and 2.5B pairs) are thousands of such files. Reading them file by file, and only the
columns a step needs, is what lets clustering read captions without ever holding an image, each process take its own
files, a crashed run resume at file granularity, and every pair be named by (file, key) in a labels table.
"""

import glob
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import pyarrow.parquet as pq

from ..core.checks import files_inside
from ..core.errors import InputError

DATA_EXTENSIONS = (".parquet", ".tar")


def expand_braces(pattern: str) -> list[str]:
    """open_clip's and webdataset's shard patterns: `x-{00000..00099}.tar` (a range, zero-padded as written) and
    `x-{a,b}.tar` (a list), any number of them, in order."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    if numbers := re.fullmatch(r"(\d+)\.\.(\d+)", body):
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        choices = [str(number).zfill(width) for number in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def pattern_files(source: str) -> list[str] | None:
    """The data files that `source` names itself, if it does: one data file, a brace pattern or a glob (in order);
    None for a folder or a Hub id. A local pattern names only files that exist."""
    if not source.endswith(DATA_EXTENSIONS) or os.path.isdir(source):
        return None
    files = expand_braces(source)
    if "://" in source:
        return files
    if any(char in source for char in "*?["):
        files = sorted({match for file in files for match in glob.glob(file, recursive=True)})
        if not files:
            raise InputError(f"--dataset {source!r} matches no data file.")
    if missing := [file for file in files if not os.path.isfile(file)]:
        raise InputError(
            f"--dataset {source!r} names {len(missing)} data files that do not exist, e.g. {missing[0]!r}."
        )
    return files


def list_data_files(source: str, split: str = "train") -> list[str]:
    """The corpus's data files in a fixed order: those `source` names itself (`pattern_files`: one file, a brace
    pattern, a glob), a local folder's `*.parquet` or `*.tar` files (sorted, any depth), or the files `datasets`
    resolves for a Hub dataset's split (hf:// URLs, read through fsspec)."""
    local = (named := pattern_files(source)) is not None or os.path.isdir(source)
    if local and split != "train":  # a split recorded but never applied would label one set as another
        raise InputError(
            f"--dataset {source!r} is local data files, which hold one split, 'train': --split {split!r} names "
            "nothing there (it picks a split of a Hub dataset or a saved DatasetDict)."
        )
    if named is not None:
        files = named
    elif os.path.isdir(source):  # its own files only: a link out of it would read another corpus as part of this one
        found = files_inside(source, "--dataset")
        files = sorted(str(Path(source, path)) for path in found if path.suffix in DATA_EXTENSIONS)
    else:
        files = [file for file in hub_data_files(source, split) if file.endswith(DATA_EXTENSIONS)]
    if not files:
        raise InputError(f"--dataset {source!r} holds no data files ({' or '.join(DATA_EXTENSIONS)}).")
    formats = {posixpath.splitext(file)[1] for file in files}
    if len(formats) > 1:
        raise InputError(f"--dataset {source!r} mixes data file formats {sorted(formats)}: use one.")
    return files


def corpus_root(source: str, files: list[str]) -> str:
    """The folder a corpus's data files are named relative to (`relative_names`): a local folder itself; the folder
    of a single file, a pattern or a glob (where the pattern's fixed part ends); a Hub dataset's repo at the commit its
    files were read at (`hf://datasets/org/name@commit`)."""
    if os.path.isdir(source):
        return source
    if hub := re.match(r"hf://datasets/[^@]+@[^/]+(?=/)", files[0]):
        return hub.group(0)
    return posixpath.dirname(re.split(r"[*?\[{]", source)[0]) or "."


def relative_names(source: str, files: list[str]) -> list[str]:
    """Each of `source`'s data files (`list_data_files`) named relative to the corpus root, in POSIX form: what a
    labels table records. The same corpus copied elsewhere, or read from the Hub and from a clone of its repo, has the
    same names; no name can point outside the corpus."""
    root = corpus_root(source, files)
    if "://" in root:
        return [file[len(root) :].lstrip("/") for file in files]
    return [Path(os.path.relpath(file, root)).as_posix() for file in files]


def unsafe_name(name) -> str | None:
    """Why a data file name read from a labels table cannot be a corpus's relative name (None when it can): it must
    not be empty, absolute, a URL, climb out of the corpus (`..`) or name anything but a data file. A table travels;
    what it names must never choose which file is opened or which address is fetched."""
    if not isinstance(name, str) or not name:
        return "it is not a file name"
    if "://" in name or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", name):
        return "it is a URL"
    if why := unsafe_path(name, "the corpus"):
        return why
    if not name.endswith(DATA_EXTENSIONS):
        return f"it is no data file ({' or '.join(DATA_EXTENSIONS)})"
    return None


def unsafe_path(name: str, within: str) -> str | None:
    """Why `name` cannot be a relative path inside the folder `within` (None when it can): it must not be absolute,
    hold a backslash (a folder separator to Windows tools) or climb out of the folder (`..`)."""
    if name.startswith("/"):
        return "it is an absolute path"
    if "\\" in name:
        return "it is not in POSIX form (a backslash)"
    if ".." in name.split("/"):
        return f"it climbs out of {within} (..)"
    return None


FINGERPRINT_BLOCK = 1 << 16  # bytes of each sampled block
FINGERPRINT_BLOCKS = 16  # evenly spaced blocks, besides the first and the last


def fingerprint(file: str, info: dict | None = None) -> str:
    """A content fingerprint of one data file that costs the same whatever its size: the store's own content hash
    where it keeps one (a Hub file's LFS sha256 or git blob id), else a BLAKE2b of its size, its first and last
    64 KiB and 16 evenly spaced 64 KiB blocks (the whole file up to 1.1 MiB).

    It tells a file replaced, regenerated, re-encoded or cut from the one clustered; an edit of a big file that keeps
    its size and misses every sampled block (1.1 MiB of a 500 MB shard) can pass, and is caught when the file is read
    only if it changes the file's keys. `info`: the file's fsspec `info()`, when the caller has it already."""
    filesystem, path = fsspec.core.url_to_fs(file)
    info = info or filesystem.info(path)
    if stored := (info.get("lfs") or {}).get("sha256") or info.get("blob_id"):
        return f"hub:{stored}"
    size = int(info["size"])
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    if size <= (FINGERPRINT_BLOCKS + 2) * FINGERPRINT_BLOCK:
        blocks = [(0, size)]
    else:  # the first block, FINGERPRINT_BLOCKS between, the last
        last = size - FINGERPRINT_BLOCK
        steps = FINGERPRINT_BLOCKS + 1
        blocks = [(last * step // steps, FINGERPRINT_BLOCK) for step in range(steps + 1)]
    with filesystem.open(path, "rb") as stream:
        for offset, length in blocks:
            stream.seek(offset)
            digest.update(stream.read(length))
    return f"blake2b:{digest.hexdigest()}"


def hub_data_files(source: str, split: str) -> list[str]:
    """Every file `datasets` resolves for a Hub dataset's split, sorted (hf:// URLs at the commit it resolved)."""
    from datasets import load_dataset_builder

    data_files = load_dataset_builder(source).config.data_files or {}
    if split not in data_files:
        raise InputError(f"--dataset {source!r} has no split {split!r} in data files; it has {list(data_files)}.")
    return sorted(str(file) for file in data_files[split])


def read_samples(file: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Each pair of one data file as {"__key__": key, column: value, ...}, in file order.

    A parquet file reads only `columns` (all when None); its key is the row's index in the file. A tar shard is
    read through once, keeping only the members of `columns` (by extension: `txt`, `json`, `jpg`, ...; all when None)
    as bytes, so images that are not asked for are skipped, never decoded or held; its key is the webdataset key.
    A column may name alternatives as webdataset does (`jpg;png`: `alternatives`).
    """
    reader = _parquet_samples if file.endswith(".parquet") else _tar_samples
    empty = True
    with _named_failures(file):
        for sample in reader(file, columns):
            empty = False
            yield with_alternatives(sample, columns)
    if empty:  # a shard that a download or a conversion left empty: no sample to cluster, train on or label
        raise InputError(f"data file {file!r} holds no sample.")


def columns_of(file: str) -> list[str]:
    """The columns of a data file, read without any value: a parquet file's schema, or the member extensions of a
    tar shard's first sample (webdataset shards give every sample the same members)."""
    if file.endswith(".parquet"):
        return list(column_types(file))
    with _named_failures(file):
        columns, first = [], None
        for key, extension, tar, member in _tar_members(file):
            if first is not None and key != first:
                break
            first = key
            columns.append(extension)
            if extension == "json" or extension.endswith(".json"):  # its fields are columns too (`json_field`)
                content = json.loads(tar.extractfile(member).read() or b"null")
                columns += [f"{extension}.{name}" for name in content] if isinstance(content, dict) else []
        return columns


def column_types(file: str) -> dict:
    """The arrow type of each column of a parquet file, read from its schema; {} for a tar shard, whose members are
    all bytes."""
    if not file.endswith(".parquet"):
        return {}
    with _named_failures(file), fsspec.open(file, "rb") as stream:
        return {column.name: column.type for column in pq.ParquetFile(stream).schema_arrow}


def alternatives(column: str) -> list[str]:
    """The members a column names, as webdataset's `getfirst` reads them: `jpg;png` is a sample's `jpg` member if it
    has one, else its `png` (a shard of JPEGs and PNGs alike); any other column is itself."""
    return column.split(";")


def members_of(columns: list[str]) -> list[str]:
    """The members (a parquet file's columns) that `columns` are read from: each column's alternatives."""
    return list(dict.fromkeys(name for column in columns for name in alternatives(column)))


def first_present(sample: dict, column: str):
    """`sample`'s value of `column`: its own (a sample `read_samples` chose it in already), else the first of its
    alternatives the sample has (None if it has none)."""
    return next((sample[name] for name in [column, *alternatives(column)] if sample.get(name) is not None), None)


def with_alternatives(sample: dict, columns: list[str] | None) -> dict:
    """`sample` with each asked-for column of alternatives (`jpg;png`) in place of the members it was chosen from."""
    for column in (column for column in columns or [] if ";" in column):
        chosen = first_present(sample, column)
        for name in alternatives(column):
            if name not in columns:
                sample.pop(name, None)
        sample[column] = chosen
    return sample


@contextmanager
def _named_failures(file: str) -> Iterator[None]:
    """A data file that cannot be read (missing, truncated, not a tar or parquet file) becomes an InputError naming
    it."""
    try:
        yield
    except InputError:
        raise
    except (OSError, tarfile.TarError, ValueError) as error:
        raise InputError(f"data file {file!r} cannot be read ({type(error).__name__}: {error}).") from error


def caption_of(value, where: str = "a pair"):
    """A caption as read from a data file: text of a `txt` member, a JSON list or string, or a parquet value (None:
    none). Anything else is refused, naming `where` it was: bytes that are not UTF-8, a number, a mapping."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{where} has a caption that is not UTF-8 text ({error}).") from error
        try:
            value = json.loads(text) if text.lstrip().startswith(("[", '"')) else text
        except ValueError:
            return text
    texts = value if isinstance(value, list) else [value]
    if not all(text is None or isinstance(text, str) for text in texts):
        raise InputError(
            f"{where} has a caption of type {type(value).__name__} ({str(value)[:40]!r}): a caption is text, or a "
            "list of texts (--caption-column)."
        )
    return value


def _parquet_samples(file: str, columns: list[str] | None) -> Iterator[dict]:
    with fsspec.open(file, "rb") as stream:
        parquet = pq.ParquetFile(stream)
        names = parquet.schema_arrow.names
        missing = [column for column in columns or [] if not set(alternatives(column)) & set(names)]
        if missing:
            raise InputError(f"data file {file!r} has no column {sorted(missing)}; it has {names}.")
        read = None if columns is None else [name for name in members_of(columns) if name in names]
        row = 0
        for batch in parquet.iter_batches(columns=read):
            for values in batch.to_pylist():
                yield {"__key__": str(row), **values}
                row += 1


def _tar_members(file: str) -> Iterator[tuple[str, str, tarfile.TarFile, tarfile.TarInfo]]:
    """(webdataset key, extension, tar, member) of each file in a tar shard, read as a stream: a member's bytes are
    only read if its caller extracts them."""
    with fsspec.open(file, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                if why := unsafe_path(member.name, "the folder the shard is extracted into"):  # keys become names
                    raise InputError(
                        f"data file {file!r} holds the member {member.name!r}: {why}. A shard's members must be "
                        "relative paths inside it: written out again (a reshard, `tar x`) it would land elsewhere."
                    )
                folder, name = posixpath.split(member.name)
                stem, _, extension = name.partition(".")  # webdataset: the key ends at the basename's first dot
                yield posixpath.join(folder, stem), extension, tar, member
        # tarfile ends quietly where the bytes end if that is between two members: a file cut there (a download
        # stopped short) would pass for a shorter shard. An archive ends with a zero block, read by now.
        if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"it ends after {tar.offset} bytes, without an end-of-archive block: truncated")


def json_field(column: str) -> tuple[str, str] | None:
    """(member, field) of a column that names a field of a tar sample's JSON member, LAION-style: `json.caption` is
    the `caption` field of the `json` member (`x.json.caption` of the `x.json` member); None for any other column."""
    member, _, name = column.rpartition(".")
    return (member, name) if member == "json" or member.endswith(".json") else None


def json_members(columns: list[str]) -> set[str]:
    """The JSON members the asked-for JSON fields (`json_field`) are read from."""
    return {named[0] for column in columns if (named := json_field(column))}


def with_json_fields(sample: dict, columns: list[str] | None) -> dict:
    """`sample` with each asked-for JSON field (`json_field`) that is not a member itself: None where its JSON member
    or the field is missing; a member that is no JSON object is refused, naming the pair."""
    for column in columns or []:
        if column in sample or (named := json_field(column)) is None or named[0] not in sample:
            continue
        try:
            content = json.loads(sample[named[0]])
        except (ValueError, UnicodeDecodeError):
            content = None
        if not isinstance(content, dict):
            raise InputError(f"pair {sample['__key__']!r}: its {named[0]!r} member is no JSON object ({column!r}).")
        value = content.get(named[1])
        sample[column] = value.encode() if isinstance(value, str) else json.dumps(value).encode() if value else None
    return sample


def _tar_samples(file: str, columns: list[str] | None) -> Iterator[dict]:
    sample, seen = {}, set()
    members = None if columns is None else {*members_of(columns), *json_members(columns)}
    for key, extension, tar, member in _tar_members(file):
        if sample and sample["__key__"] != key:
            yield with_json_fields(sample, columns)
            sample = {}
        if not sample:
            if key in seen:  # its members apart: two samples of one key, which no labels table can tell apart
                raise InputError(f"data file {file!r} holds key {key!r} twice: a shard's sample keys must be unique.")
            seen.add(key)
        sample.setdefault("__key__", key)
        if members is None or extension in members:
            sample[extension] = tar.extractfile(member).read()
    if sample:
        yield with_json_fields(sample, columns)


def write_tar_sample(tar: tarfile.TarFile, sample: dict) -> None:
    """Append one webdataset sample ({"__key__": key, extension: bytes, ...}) to an open tar file."""
    for extension, value in sample.items():
        if extension == "__key__":
            continue
        info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
        info.size = len(value)
        tar.addfile(info, io.BytesIO(value))
