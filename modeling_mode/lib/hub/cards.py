"""What every card and pushed record shares: the card templates (`templates/*.md`, package data of this package),
and records named without local paths.

A run's records name its inputs by local paths; what is published names them by their last path component only (see
`without_local_paths`): of no use to anyone else, and maybe private. The model card is rendered by
`publish.model_card`, the dataset card of a clustering by `clustering.push`.
"""

import os
from collections import Counter
from pathlib import Path

from ..core.errors import InputError
from ..core.files import read_json

# The card templates: package data of this package (pyproject.toml's package-data), in an editable install and a normal
# one alike.
TEMPLATES = Path(__file__).parent / "templates"


def without_local_paths(value):
    """`value` (JSON-like) with every string that is an absolute path cut to its last component: a record names an
    expert by its run directory's name, not by where it lay on this machine (of no use to anyone else, and maybe
    private). A Hub id (org/name) is not absolute and stays as it is."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def published_record(path: Path, default=None):
    """A run's JSON record as it may be published (without local paths), or `default` if the run has none."""
    if not path.is_file():
        return default
    try:
        return without_local_paths(read_json(path))
    except ValueError as error:
        raise InputError(f"{path} is not valid JSON ({error}).") from error


def expert_rows(fine_to_coarse: list[int], clustering: dict | None) -> list[dict]:
    """One row per expert: how many fine clusters route to it and, when the clustering recorded them, its pairs."""
    fine_per_expert = Counter(fine_to_coarse)
    pairs = (clustering or {}).get("coarse_sizes") or []
    return [
        {"expert": k, "fine_clusters": fine_per_expert.get(k, 0), "pairs": pairs[k] if k < len(pairs) else "?"}
        for k in range(max(len(pairs), max(fine_to_coarse, default=-1) + 1))
    ]
