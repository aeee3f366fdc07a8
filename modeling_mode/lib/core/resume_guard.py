"""One way to say "this output was made with other settings": only the fields that differ, each value shortened, and
the fix, in one line of at most `MAX_LINE` characters whatever the settings hold (a web corpus lists tens of
thousands of data files).

Every output that a re-run would resume or reuse (embeddings, a reshard, the main job, a grown MODE's steps) records
the settings it was made with, and refuses other ones through `check_same_settings`.
"""

from .errors import InputError

MAX_LINE = 500  # characters of a refusal, at most
MAX_VALUE = 60  # characters of one value shown
MAX_FIELDS = 4  # fields named; the others counted


def flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings by dotted key: {"sources": {"dataset": x}} -> {"sources.dataset": x}."""
    flattened = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flattened |= flat(value, f"{prefix}{key}.")
        else:
            flattened[f"{prefix}{key}"] = value
    return flattened


MISSING = object()  # a field one side has not: a setting added or dropped since


def brief(value) -> str:
    """A value as a refusal shows it: no longer than MAX_VALUE characters."""
    text = "unset" if value is MISSING else repr(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def difference(key: str, stored, current) -> str:
    """'key: X there, Y now'; two lists by their lengths and their first differing entry."""
    if isinstance(stored, list) and isinstance(current, list):
        first = next((i for i, (a, b) in enumerate(zip(stored, current)) if a != b), min(len(stored), len(current)))
        entries = [brief(side[first]) if first < len(side) else "none" for side in (stored, current)]
        return (
            f"{key}: {len(stored)} entries there, {len(current)} now, first differing at [{first}]: "
            f"{entries[0]} there, {entries[1]} now"
        )
    return f"{key}: {brief(stored)} there, {brief(current)} now"


def differences(stored: dict, current: dict) -> list[str]:
    """Each field of `stored` or `current` (nested by dotted key) that differs, shortened; in key order."""
    before, after = flat(stored), flat(current)
    return [
        difference(key, before.get(key, MISSING), after.get(key, MISSING))
        for key in sorted(before.keys() | after.keys())
        if before.get(key, MISSING) != after.get(key, MISSING)
    ]


def check_same_settings(stored: dict, current: dict, made: str, fix: str) -> None:
    """Refuse (InputError) when `current` differs from `stored`: '{made} with other settings (...): {fix}', the
    differences cut to keep the line within MAX_LINE characters."""
    found = differences(stored, current)
    if not found:
        return
    named = found[:MAX_FIELDS] + ([f"and {len(found) - MAX_FIELDS} more"] if len(found) > MAX_FIELDS else [])
    details, frame = "; ".join(named), f"{made} with other settings (): {fix}"
    room = MAX_LINE - len(frame)
    if len(details) > room:
        details = details[: max(0, room - 3)] + "..."
    raise InputError(f"{made} with other settings ({details}): {fix}")
