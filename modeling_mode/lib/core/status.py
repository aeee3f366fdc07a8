"""The child's side of the protocol between a parent and the library's entry points (`entry_points`): what a child
reports to the JSON-lines status file its parent names in `MODE_STATUS_FILE` (none named: nothing is reported).

Events: `{"progress": "<the bar as tqdm draws it>"}` while it works (`ProgressBar`, the library's progress bars) and
`{"error": "<its refusal>"}` when it refuses its input (`cli.run`).
"""

import json
import os
import time

from tqdm.auto import tqdm

STATUS_FILE = "MODE_STATUS_FILE"


def report(**event) -> None:
    """Append `event` to the parent's status file, if a parent named one. Under a launcher the main process reports
    progress (every process would report the same bars); an error is reported by whichever process meets it."""
    path = os.environ.get(STATUS_FILE)
    if path is None or ("progress" in event and os.environ.get("RANK", "0") != "0"):
        return
    with open(path, "a") as file:  # one line per write, appended: the parent reads whole lines only
        file.write(json.dumps(event) + "\n")


class ProgressBar(tqdm):
    """A tqdm bar that also reports its state to the parent (`report`): at most every `report_every` seconds as it
    draws itself, and once more when it closes."""

    report_every = 1.0

    def display(self, *args, **kwargs):
        shown = super().display(*args, **kwargs)
        if time.monotonic() - getattr(self, "_reported", float("-inf")) >= self.report_every:
            self._report()
        return shown

    def close(self):
        if not self.disable:  # a bar closes twice (close, then __del__): the second time it is disabled
            self._report()
        super().close()

    def _report(self) -> None:
        self._reported = time.monotonic()
        report(progress=str(self).strip())
