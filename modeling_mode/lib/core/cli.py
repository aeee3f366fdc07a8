"""The scripts' one command-line style: a dataclass of arguments parsed by transformers' `HfArgumentParser`, and
bad input ending in one line naming the problem on stderr and exit status 2.

Status 2 is what argparse uses for a bad flag, so a caller (a shell, `train/job.py`) tells "fix your input" from a
crash (a traceback, status 1) the same way for every script. `HfArgumentParser` accepts each flag with dashes and with
underscores (`--output-dir`, `--output_dir`), as transformers' example scripts do.
"""

import dataclasses
import sys
from argparse import RawDescriptionHelpFormatter

from transformers import HfArgumentParser

from .errors import InputError
from .status import report

BAD_INPUT = 2


def parse(arguments_class, description: str, argv: list[str] | None = None):
    """The `arguments_class` dataclass filled from `argv` (default: the command line), or from the one JSON file it
    names (`script.py args.json`, as transformers' example scripts take); `--help` shows `description`.

    A flag the script does not take, and a check in the dataclass's `__post_init__` that raises InputError, end the
    script as any bad input does: one line, exit status 2.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    # Raw: the description is the script's docstring, whose usage lines must keep their breaks.
    parser = HfArgumentParser(arguments_class, description=description, formatter_class=RawDescriptionHelpFormatter)
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            (arguments,) = parser.parse_json_file(argv[0])
        except (OSError, ValueError, TypeError) as error:  # unreadable, not JSON, a key the script does not take
            raise InputError(f"{argv[0]}: {' '.join(str(error).split())}") from None
        return arguments
    arguments, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        raise InputError(f"unrecognized arguments: {' '.join(unknown)} (--help lists the flags this script takes).")
    return arguments


def run(main, *also: type[Exception]):
    """Call `main()`; an InputError (or one of the `also` errors) becomes `error: ...` and exit status 2, and is
    reported to the parent that launched this process, if one did (`status`, `entry_points`)."""
    try:
        return main()
    except (InputError, *also) as error:
        print(f"error: {error}", file=sys.stderr)
        report(error=str(error))
        sys.exit(BAD_INPUT)


def command_line(arguments) -> list[str]:
    """The flags that make `parse` rebuild `arguments` (a dataclass instance): each field that differs from its
    default, spelled with dashes. Building a script's command from its dataclass means a misspelt or removed field
    fails when the caller builds it, not when the script starts, maybe hours later (`train/job.py`'s stages)."""
    flags = []
    for spec in dataclasses.fields(arguments):
        value = getattr(arguments, spec.name)
        if spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = spec.default
        if value == default or value is None:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else [flag, "false"]
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags
