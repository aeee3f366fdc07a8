"""A `--launcher` for train/job.py whose first training stage is SIGKILLed right after its checkpoint of STEP.

    python tests/killing_launcher.py STEP SCRIPT FLAGS...

train/expert.py's training runs in this process, as the plain launcher would run it, and dies as a crash would:
no final save, no exit handler. Any other script runs unchanged.
"""

import os
import runpy
import signal
import sys

from modeling_mode.lib import cli
from modeling_mode.lib.training import ExpertTrainingArguments, train

if __name__ == "__main__":
    kill_at, script, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if os.path.basename(script) != "expert.py":
        sys.argv = [script, *flags]
        runpy.run_path(script, run_name="__main__")
        sys.exit()
    args = cli.parse(ExpertTrainingArguments, __doc__, flags)

    def kill(step: int, _checkpoint: str) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(args, on_checkpoint=kill)
