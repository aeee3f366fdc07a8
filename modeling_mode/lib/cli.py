"""How the project's scripts end on bad input: one line naming the problem on stderr, and exit status 2.

Status 2 is what argparse uses for a bad flag, so a caller (a shell, `train/job.py`) tells "fix your input"
from a crash (a traceback, status 1) the same way for every script.
"""

import sys

from .errors import InputError

BAD_INPUT = 2


def run(main, *also: type[Exception]):
    """Call `main()`; an InputError (or one of the `also` errors) becomes `error: ...` and exit status 2."""
    try:
        return main()
    except (InputError, *also) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(BAD_INPUT)
