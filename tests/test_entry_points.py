"""The one protocol between a parent and the entry points it launches (`core.entry_points`, `core.status`): the child's
progress and its refusal reach the parent through the status file, whatever the child prints."""

import sys

import pytest

from modeling_mode.lib.core.entry_points import EntryPointError, run_entry_point

pytestmark = pytest.mark.slow  # each child is a fresh Python that imports the library (seconds)

# A child as the library's entry points are: its bar is the library's, its refusal goes through `cli.run`. It also
# prints a line that looks like a refusal, which the parent must not take for one.
CHILD = """
import sys
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.status import ProgressBar

def main():
    for _ in ProgressBar(range(3), desc="steps"):
        pass
    print("error: not a refusal, just a line", file=sys.stderr)
    if sys.argv[1] == "refuse":
        raise InputError("--dataset 'nowhere' does not exist.")
    raise ZeroDivisionError("a bug")

cli.run(main)
"""


def test_a_childs_progress_and_refusal_come_through_the_status_file(tmp_path, monkeypatch):
    bars = []
    with open(tmp_path / "child.log", "wb") as log, pytest.raises(EntryPointError) as refused:
        run_entry_point([sys.executable, "-c", CHILD, "refuse"], log, on_progress=bars.append)
    assert (str(refused.value), refused.value.returncode, refused.value.reported) == (
        "--dataset 'nowhere' does not exist.", 2, True
    )  # fmt: skip
    assert bars and bars[-1].startswith("steps: 100%|") and bars[-1].split("| ")[1].startswith("3/3")
    assert "error: --dataset 'nowhere' does not exist." in (tmp_path / "child.log").read_text()  # its output as it is

    monkeypatch.setenv("RANK", "1")  # another process of a launcher: its bars are the main process's to report
    bars.clear()
    with pytest.raises(EntryPointError) as crashed:
        run_entry_point([sys.executable, "-c", CHILD, "crash"], on_progress=bars.append)
    assert (crashed.value.returncode, crashed.value.reported, bars) == (1, False, [])
    assert "failed with exit status 1 (its output is above)" in str(crashed.value)
