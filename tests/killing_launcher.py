"""A `--launcher` for train/job.py whose first training stage is SIGKILLed right after its checkpoint of STEP.

    python tests/killing_launcher.py STEP -m MODULE FLAGS...

The expert training (`-m modeling_mode.lib.training`) runs in this process, as the plain launcher would run it, and
dies as a crash would: no final save, no exit handler. Any other entry point runs unchanged.
"""

import os
import runpy
import signal
import sys

from modeling_mode.lib.core import cli
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.loop import train

if __name__ == "__main__":
    kill_at, (dash_m, module, *flags) = int(sys.argv[1]), sys.argv[2:]
    assert dash_m == "-m", "the job runs the library's entry points as python -m MODULE"
    if module != "modeling_mode.lib.training":
        sys.argv = [module, *flags]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        sys.exit()
    args = cli.parse(ExpertTrainingArguments, __doc__, flags)

    def kill(step: int, _checkpoint: str) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(args, on_checkpoint=kill)
