"""The checks every tool makes of its inputs and outputs before any work, each refusal an `InputError` that names
what to fix: a source that exists (`check_source`), a loader's failure named (`naming_failures`), an output file or
folder that can be written and holds no other tool's output (`check_output_file`, `check_output_dir`), a folder's
files inside it (`files_inside`), weight files that open (`check_weight_files`)."""

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

# A Hugging Face Hub repo id: "name" or "org/name".
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def check_source(what: str, path: str) -> None:
    """Refuse a local path that does not exist; a Hub id (org/name) is left for its loader to find or not, and a
    pattern of data files (`data_files.pattern_files`) for its expansion to check."""
    looks_local = not HUB_ID.fullmatch(path) or path.startswith((".", "~"))
    is_pattern = path.endswith((".tar", ".parquet")) and any(char in path for char in "{*?[")
    if looks_local and not is_pattern and not os.path.exists(path):
        raise InputError(f"{what} {path!r} does not exist (and is not a Hub id of the form org/name).")


@contextmanager
def naming_failures(what: str, path: str) -> Iterator[None]:
    """Turn any failure to load `path` (a directory or a Hub id) into an InputError that names it and `what` it is.

    Loaders fail in many ways (a missing file, a truncated safetensors header, a malformed id, an offline Hub) and
    their messages often omit the path: this says which input was at fault, with the loader's own words after it.
    """
    check_source(what, path)
    try:
        yield
    except InputError:
        raise
    except Exception as error:  # a loader's failure, whatever its type, is a bad input here
        where = "the directory" if os.path.isdir(path) else "the Hub repo"
        said = " ".join(str(error).split())  # one line: some loaders' messages span several
        raise InputError(f"{what} {path!r}: {where} could not be loaded ({type(error).__name__}: {said}).") from error


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Refuse, before any work, an output file that could not be written: a directory, or a path inside a file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a directory: give the path of a file to write.")
    _check_writable_folder(path.parent, flag, path)
    return path


# The files each tool leaves at the top of its output folder, by which another tool knows the folder is not its own.
OUTPUT_KINDS = {
    "a clustering run": ("clusters.json", "clusters.safetensors", "embeddings", "labels"),
    "a training run": ("training_args.json", "checkpoints"),
    "a reshard": ("manifest.json",),
    "a main job": ("recipe.json", "timings.json"),
}


def check_output_dir(
    path: str | os.PathLike, flag: str = "--output", dataset: str | None = None, kind: str | None = None
) -> Path:
    """Refuse, before any work, an output directory that is a file or lies inside one; (`dataset`: the run's
    --dataset) one inside the corpus's folder, whose next listing would take the outputs for data files; and (`kind`:
    the tool's, of `OUTPUT_KINDS`) one that holds another tool's output."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a file: give a directory.")
    _check_writable_folder(path, flag, path)
    others = {other: markers for other, markers in OUTPUT_KINDS.items() if other != kind} if kind else {}
    for other, markers in others.items():
        if found := next((name for name in markers if (path / name).exists()), None):
            raise InputError(
                f"{flag} {str(path)!r} holds {other} ({found}), not {kind}: give an empty folder (or, to resume, one "
                f"that {kind} of these settings wrote)."
            )
    root = dataset_folder(dataset) if dataset else None
    if root is not None and path.resolve().is_relative_to(root):
        raise InputError(
            f"{flag} {str(path)!r} is inside --dataset {dataset!r}: its files would be read as the corpus's by the "
            "next run on it. Give a folder outside the corpus."
        )
    return path


def dataset_folder(dataset: str) -> Path | None:
    """The local folder a --dataset lists its data files from (a folder, or a pattern's fixed part); None for a Hub
    id or a single file."""
    fixed = re.split(r"[*?\[{]", dataset, maxsplit=1)[0]
    folder = Path(fixed if fixed == dataset else os.path.dirname(fixed) or ".")
    return folder.resolve() if folder.is_dir() else None


def _check_writable_folder(folder: Path, flag: str, named: Path) -> None:
    """The nearest existing path at or above `folder` must be a directory we may write in (to create the rest)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{flag} {str(named)!r} is inside {str(existing)!r}, which is a file.")
    if not os.access(existing, os.W_OK):
        raise InputError(f"{flag} {str(named)!r}: {str(existing)!r} is not writable.")


def files_inside(folder: str | os.PathLike, what: str) -> list[Path]:
    """Every file under `folder`, as paths relative to it, sorted; each a regular file that lies inside the folder.

    A folder handed to a tool (a MODE to copy or push, a corpus to read) is input like any other: a symbolic link in it
    must not make the tool read, copy or publish a file from elsewhere. So a link is followed only to a regular file
    inside the folder (or, for a Hub cache snapshot, whose files are links into its repo's `blobs/`, inside that repo's
    cache folder); a link that leads out of it, a link to a folder, and anything but a regular file are refused, named.
    """
    folder = Path(folder)
    inside = folder.resolve()
    if inside.parent.name == "snapshots" and (inside.parent.parent / "blobs").is_dir():
        inside = inside.parent.parent  # models--org--name/: snapshots/REV/ links into blobs/ there
    files = []
    for directory, subfolders, names in os.walk(folder):  # a link to a folder is listed here, never descended into
        for path in (Path(directory, name) for name in subfolders + names):
            relative, target = path.relative_to(folder), path.resolve()
            if path.is_symlink() and (target.is_dir() or not target.is_relative_to(inside)):
                where = "a folder" if target.is_dir() else f"{str(target)!r}, outside the folder"
                raise InputError(
                    f"{what} {str(folder)!r}: {str(relative)!r} is a link to {where}: copy the file itself into "
                    "the folder, or remove the link."
                )
            if path.is_dir():
                continue
            if not target.is_file():  # a dangling link, a pipe, a device: nothing a tool may read as a file
                raise InputError(f"{what} {str(folder)!r}: {str(relative)!r} is not a regular file.")
            files.append(relative)
    return sorted(files)


def check_weight_files(folder: str | os.PathLike, what: str) -> list[Path]:
    """Open every safetensors file of a `save_pretrained` folder (the shards its index names, else each
    `*.safetensors`) and return them: a missing shard or a truncated file fails here, named, not deep in a loader."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    try:
        shards = json.loads(index.read_text())["weight_map"].values() if index.is_file() else None
    except (ValueError, KeyError) as error:
        raise InputError(f"{what} {str(folder)!r}: {index.name} is not a weight index ({error}).") from error
    for name in shards or []:
        if not isinstance(name, str) or Path(name).name != name:  # the index must not choose a file elsewhere
            raise InputError(f"{what} {str(folder)!r}: {index.name} names the shard {name!r}, not a file in it.")
    files = sorted({folder / name for name in shards}) if shards is not None else sorted(folder.glob("*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), framework="numpy"):
                pass  # safetensors refuses a file its header does not cover whole: a truncated copy fails here
        except (OSError, SafetensorError) as error:
            raise InputError(
                f"{what} {str(folder)!r}: {file.name} cannot be read ({type(error).__name__}: {error}); it may be "
                "truncated: copy or save it again."
            ) from error
    return files
