"""The lock of a folder that a run writes into (`lib.core.files.writing_lock`): a second writer meanwhile is refused at
once, naming the first; a killed writer's lock is taken over; a writer that wrote nothing leaves no folder."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.files import LOCK, writing_lock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = re.compile(r"process (\d+) on .+, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def test_a_second_writer_is_refused_at_once_naming_the_first(tmp_path):
    with writing_lock(tmp_path / "out"):
        (tmp_path / "out" / "made").write_text("1")
        with pytest.raises(InputError) as refused, writing_lock(tmp_path / "out", "--work-dir"):
            pass
        assert HOLDER.fullmatch((tmp_path / "out" / LOCK).read_text())  # the refused writer left the line as it was
    refusal = r"--work-dir '.*out' is being written by (.*): wait for it to end, or give another --work-dir\."
    said = re.fullmatch(refusal, str(refused.value))
    assert said and int(HOLDER.fullmatch(said[1])[1]) == os.getpid()
    assert sorted(os.listdir(tmp_path / "out")) == [LOCK, "made"]  # the lock file stays beside the outputs


def test_a_writer_that_wrote_nothing_leaves_no_folder(tmp_path):
    with writing_lock(tmp_path / "a" / "out"):
        pass
    assert not (tmp_path / "a" / "out").exists() and (tmp_path / "a").is_dir()


@pytest.mark.slow
def test_a_killed_writers_lock_is_taken_over(tmp_path):
    holder = (
        "import sys, time\nfrom pathlib import Path\nfrom modeling_mode.lib.core.files import writing_lock\n"
        "with writing_lock(sys.argv[1]):\n    (Path(sys.argv[1]) / 'made').write_text('1')\n"
        "    print('holding', flush=True)\n    time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True,
                          env=env) as run:  # fmt: skip
        assert run.stdout.readline() == "holding\n"
        with pytest.raises(InputError, match=rf"is being written by process {run.pid} on "):
            with writing_lock(tmp_path / "out"):
                pass
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert HOLDER.fullmatch((tmp_path / "out" / LOCK).read_text())[1] == str(run.pid)  # stale: its process is gone
    with writing_lock(tmp_path / "out"):
        assert HOLDER.fullmatch((tmp_path / "out" / LOCK).read_text())[1] == str(os.getpid())
