"""The README's two commands: the main job's set-up is the test set-up less the dev tools, it installs everything the
job's stages need. CI runs both as the README writes them (`.ci/run`: the job's --smoke in a new virtual environment,
which proves the set-up line complete on a clean machine)."""

import re
import runpy
import shlex
from pathlib import Path

from modeling_mode.job.requirements import EVERY_REQUIREMENT

ROOT = Path(__file__).resolve().parents[1]
readme_command = runpy.run_path(str(ROOT / ".ci" / "readme_command.py"))["readme_command"]
TEST = readme_command("Set up and test")
JOB = readme_command("Run the main job")


def set_up(command: str, last: str) -> str:
    """The command up to its step that begins with `last` (the job, or the first check)."""
    steps = command.split(" && ")
    return " && ".join(steps[: next(i for i, step in enumerate(steps) if step.startswith(last))])


def installs(command: str) -> dict[str, set[str]]:
    """What a set-up line installs: Debian packages, pip packages taken with --no-deps, and the project's extras."""
    found = {"apt": set(), "pip": set(), "extra": set()}
    for step in command.split(" && "):
        words = shlex.split(step)
        if words[:2] == ["apt-get", "install"]:
            found["apt"] |= {word for word in words[2:] if not word.startswith("-")}
        elif "install" in words and "--no-deps" in words:
            found["pip"] |= {word for word in words[words.index("install") + 1 :] if not word.startswith("-")}
        elif "-e" in words:
            found["extra"] |= set(re.fullmatch(r"\.\[(.*)\]", words[words.index("-e") + 1]).group(1).split(","))
    return found


def test_the_main_jobs_set_up_is_the_test_set_up_less_the_dev_tools():
    job, tests = set_up(JOB, "python train/job.py"), set_up(TEST, "ruff")
    assert tests == job.replace('".[demo,', '".[dev,demo,'), (job, tests)
    assert JOB.endswith("python train/job.py --recipe offline-mix --output runs/offline-mix")


def test_the_main_jobs_set_up_installs_every_stages_needs():
    installed = installs(set_up(JOB, "python train/job.py"))
    for need in EVERY_REQUIREMENT:
        kind, name = next((kind, getattr(need, kind)) for kind in ("apt", "pip", "extra") if getattr(need, kind))
        assert name in installed[kind], f"{need.name} ({need.used_by}): the main job's set-up lacks `{need.install}`"
