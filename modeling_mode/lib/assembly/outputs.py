"""An assembled MODE's folder: `save_pretrained`'s files (config, weights, remote code, processor), `assembly.json`
(where each part came from) and `seed/` (the experts' fork checkpoint). And what every tool that writes one (assemble,
grow, shrink) shares about its --output: `--overwrite_output_dir`, and the refusal of a folder that holds anything but
a MODE, or the MODE a tool reads."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...configuration_mode_clip import ModeCLIPConfig
from ..core.checks import check_output_dir
from ..core.errors import InputError
from ..core.files import read_json
from ..hub.flags import HubArguments

ASSEMBLY = "assembly.json"
SEED_FOLDER = "seed"  # the experts' fork checkpoint, inside the MODE's folder and repo


@dataclass(kw_only=True)  # keyword-only, as HubArguments: the script's own fields, without defaults, may follow
class ModelOutputArguments(HubArguments):
    """What the tools that write a MODE (assemble, grow, shrink) share besides the Hub flags."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the MODE that --output already holds (the flag's name in transformers' example scripts). "
            "Without it such an --output is refused; the MODE a tool reads is never replaced, even with it."
        },
    )


def check_output(output: str, overwrite: bool = False, source: str | None = None) -> None:
    """Refuse up front an --output that could not be written, that holds something other than a MODE, or (unless
    `overwrite`) a MODE: the output replaces the whole directory, so it must never take a run directory, a folder of
    runs or a model written by someone else with it. Nor is it ever the MODE `source` that the tool reads."""
    path = check_output_dir(output)
    check_apart(path, "--output", source)
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not holds_mode(path):
        raise InputError(
            f"--output {output!r} holds other files and no assembled MODE: the output replaces the whole "
            "directory, so give a new or empty one."
        )
    if not overwrite:
        raise InputError(
            f"--output {output!r} holds an assembled MODE already: give a new or empty folder, or pass "
            "--overwrite_output_dir to replace it."
        )


def check_apart(path: str | os.PathLike, flag: str, source: str | None) -> None:
    """Refuse a `path` to write that is the local MODE folder `source` a tool reads, lies inside it or holds it: a
    tool never modifies its input."""
    if source is None or not os.path.isdir(source):
        return
    written, read = Path(path).resolve(), Path(source).resolve()
    if written.is_relative_to(read) or read.is_relative_to(written):
        raise InputError(
            f"{flag} {str(path)!r} is --model {source!r}, inside it or around it: the MODE read is never "
            f"modified, so give {flag} a folder apart from it."
        )


def holds_mode(path: Path) -> bool:
    try:
        return read_json(path / "config.json").get("model_type") == ModeCLIPConfig.model_type
    except (OSError, ValueError, AttributeError):  # AttributeError: a config.json that is no JSON object
        return False
