"""MODE end to end, resumable: data, clustering, seed, experts, assembly, baselines, evaluation and report.

    python train/job.py --recipe offline-mix --output runs/offline-mix [--smoke] [--seeds K] [--validation-only]

runs on the offline corpus (real images that install without the Hub) and a seed trained from random weights. Online,
the same stages run on your pairs, from a pretrained CLIP, on GPUs:

    python train/job.py --recipe my-recipe.json --output runs/web \\
        --dataset ORG/PAIRS --init openai/clip-vit-base-patch32 \\
        --zeroshot-dataset cifar10=uoft-cs/cifar10:test food101=ethz/food101:validation \\
        --templates cifar10=cifar10 food101=food101 \\
        --retrieval-dataset ORG/CAPTIONED:test \\
        --launcher "accelerate launch --multi_gpu --num_processes 8"

Clustering, training and assembly run the library's entry points (`python -m modeling_mode.lib...`; evaluation runs
in this process); every stage is skipped when its output is complete, so a re-run resumes. The data are built once in
`OUTPUT/data/`; each training seed s (K of them: --seeds) runs the whole comparison in `OUTPUT/seed-<s>/`, its stages'
logs in `OUTPUT/seed-<s>/logs/`. The report is `OUTPUT/report.md`, with PNG plots beside it.
"""

import dataclasses
import json
import sys
from pathlib import Path

from ..lib.core import cli
from ..lib.core.checks import check_output_dir
from ..lib.core.entry_points import EntryPointError
from ..lib.core.errors import InputError
from ..lib.core.files import read_json, write_json
from ..lib.core.resume_guard import check_same_settings, differences
from .arguments import JobArguments, Sources, check_held_out_sets, check_sources, default_encoder
from .data import refresh_held_out_sets
from .experiments import choose
from .layout import RETRIEVAL_RESULTS, ROUTING_RESULTS, JobFolder, Role, zeroshot_results_name
from .recipes import ADDED_LATER, SMOKE, check_recipe, load_recipe, random_expert_config
from .requirements import check_requirements
from .runner import Runner
from .stages import StageGraph


def run(
    recipe_name: str,
    output: Path,
    sources: Sources | None = None,
    smoke: bool = False,
    encoder: str | None = None,
    seeds: int | None = None,
    validation_only: bool = False,
) -> Path:
    """Run (or resume) the job; `seeds`, when given, replaces the recipe's number of training seeds.
    `validation_only`: train only what places the recipe on validation pairs, score no test set, and return the
    validation report (a later run without it resumes from there). The experiment is chosen here, once
    (`experiments.choose`): the requirements, the stages and the report that follow are its own."""
    sources = sources or Sources()
    name, recipe = load_recipe(recipe_name)
    recipe = dataclasses.replace(recipe, **(SMOKE if smoke else {}), **({} if seeds is None else {"seeds": seeds}))
    folder = JobFolder(check_output_dir(output, kind="a main job"))
    experiment = choose(name, recipe, sources, validation_only)
    check_requirements(experiment, sources)
    check_sources(sources, encoder or default_encoder())
    check_held_out_sets(sources)
    check_recipe(recipe, experiment.count_pairs(sources))
    config = random_expert_config(recipe) if sources.init is None else None
    folder.path.mkdir(parents=True, exist_ok=True)
    record_settings(folder.recipe, {"name": name, "smoke": smoke, **dataclasses.asdict(recipe)}, sources, encoder)
    refresh_held_out_sets(folder, recipe, sources)
    if config is not None:
        write_json(folder.clip_config, config)
    if any(model.role is Role.WIDE_DENSE for model in experiment.models):  # the validation experiment's, from scratch
        write_json(folder.wide_clip_config, random_expert_config(recipe, width_factor=2))
    graph, runner = StageGraph(folder, experiment, sources, encoder or default_encoder()), Runner(folder)
    runner.run_all(graph.training(), "training stages")
    if experiment.scores_test_sets:
        runner.run_all(graph.evaluation(), "evaluation")  # each evaluator adds its rows to its eval_results.json
    return experiment.write_report(folder.path)


# Sources that only the evaluations read: a job may resume with them corrected (`check_held_out_change`).
HELD_OUT = ("sources.zeroshot", "sources.templates", "sources.classnames", "sources.retrieval")


def record_settings(path: Path, recipe: dict, sources: Sources, encoder: str | None = None) -> None:
    """Write the job's recipe, sources and caption encoder (`--encoder`; None: the default all-MiniLM-L6-v2, wherever
    it is installed); refuse to resume a job that was started with others. Any launcher may resume a job, and any
    number of training seeds: each seed's folder depends on the other settings only. Held-out sets may change while
    no finished evaluation has read the ones they replace."""
    settings = json.loads(json.dumps({**recipe, "encoder": encoder, "sources": dataclasses.asdict(sources)}))

    def flat(record: dict) -> dict:
        named = {f"sources.{key}": value for key, value in record.get("sources", {}).items() if key != "launcher"}
        return {key: value for key, value in record.items() if key not in ("sources", "seeds")} | named

    if path.exists():
        # A field added since the job started: recorded with the value the job ran with. A job recorded before its
        # encoder was resumes with the one given now: which one it clustered with is not known.
        before, now = ADDED_LATER | {"encoder": encoder} | flat(read_json(path)), ADDED_LATER | flat(settings)
        check_same_settings(
            {key: value for key, value in before.items() if key not in HELD_OUT},
            {key: value for key, value in now.items() if key not in HELD_OUT},
            f"{path.parent} holds a job started", "resume it with those, or give another --output.",
        )  # fmt: skip
        check_held_out_change(path.parent, before, now)
    write_json(path, settings)


def check_held_out_change(job: Path, before: dict, now: dict) -> None:
    """Refuse held-out sets changed since the job started if a finished evaluation read one they replace: name
    the stages that would be redone. (None finished, as when a job failed at the stage a wrong set broke: it resumes
    with the corrected one, its training kept.)"""
    tasks = set()
    for key in ("sources.zeroshot", "sources.templates", "sources.classnames"):
        old, new = before.get(key) or {}, now.get(key) or {}
        tasks |= {task for task in old.keys() | new.keys() if old.get(task) != new.get(task)}
    outputs = [name for task in sorted(tasks) for name in (zeroshot_results_name(task), ROUTING_RESULTS)]
    if before.get("sources.retrieval") != now.get("sources.retrieval"):
        outputs.append(RETRIEVAL_RESULTS)
    finished = sorted({path for name in outputs for path in JobFolder(job).results_named(name)})
    if finished:
        changed = "; ".join(differences(
            {key: before.get(key) for key in HELD_OUT}, {key: now.get(key) for key in HELD_OUT}
        ))  # fmt: skip
        shown = ", ".join(str(path.relative_to(job)) for path in finished[:3])
        raise InputError(
            f"{job} holds a job whose held-out sets changed ({changed[:200]}): {len(finished)} finished evaluations "
            f"read the old ones and would be redone ({shown}{', ...' if len(finished) > 3 else ''}): delete them to "
            "resume with the new sets, or give another --output."
        )


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(JobArguments, __doc__, argv)
    try:
        report = run(
            args.recipe, args.output, args.sources(), smoke=args.smoke, encoder=args.encoder, seeds=args.seeds,
            validation_only=args.validation_only,
        )  # fmt: skip
    except EntryPointError as error:  # the stage's own error line is in the message; its exit status is kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.returncode)
    print(f"report: {report}")


def command() -> None:
    """`mode-job`, `python -m modeling_mode.job` and train/job.py."""
    cli.run(main)


if __name__ == "__main__":
    command()
