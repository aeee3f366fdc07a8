"""The growth experiment's report (a recipe with an `arriving_source`): MODE-n before and after growing by the
arriving source's experts, against retraining on all sources and a dense model fine-tuned on the new source alone;
shrinking back; what growing costs in pairs. It reads the job's folder alone, as `report.write_report` does."""

from pathlib import Path
from statistics import fmean

from ..lib.core.files import read_json, write_text
from ..lib.growth.outputs import expert_digests
from ..lib.training.outputs import read_record
from .layout import JobFolder, Model, SeedFolder, growth_comparison, routing_weights
from .recipes import Recipe, recipe_from_json
from .report import Scores, per_task, retrieval_table, wall_time, zero_shot_scores
from .statistics import Estimate, interval_text, mean_and_std, paired_difference

WITHIN = 1.0  # points: the grown MODE's goal against the MODE trained on all sources at once, on every set


def roles(recipe: Recipe) -> dict[str, Model]:
    """The growth comparison's models by their role in the report."""
    names = ["seed", "before", "grown", "shrunk", "dense-new", "seed-all", "all-at-once", "dense-all", "grown-long"]
    return dict(zip(names, growth_comparison(recipe), strict=True))


def task_values(scores: Scores, model: Model, t: int) -> tuple[float, ...]:
    return tuple(values[t] for values in scores[model][model.main_row])


def accuracy_table(scores: Scores, tasks: list[str], old: list[int], recipe: Recipe, batch: int) -> str:
    by_role = roles(recipe)
    before, seed = by_role["before"].steps, by_role["seed"].steps  # what growing, or fine-tuning, adds to them
    to_add = {"grown": by_role["grown"].steps - before, "grown-long": by_role["grown-long"].steps - before,
              "dense-new": by_role["dense-new"].steps - seed, "all-at-once": None, "dense-all": None}  # fmt: skip
    lines = [
        "| model | what it is | pairs seen | pairs to take in the new source | " + " | ".join(tasks)
        + " | old sets' average |",
        "|---" * (len(tasks) + 5) + "|",
    ]  # fmt: skip
    for role, model in by_role.items():
        if model not in scores:
            continue
        cost = "" if role not in to_add else f"{(to_add[role] or model.steps) * batch:,}"
        cells = " | ".join(mean_and_std(estimate) for estimate in per_task(scores[model][model.main_row], tasks))
        old_average = Estimate(tuple(fmean(values[t] for t in old) for values in scores[model][model.main_row]))
        lines.append(f"| {model.name} | {model.paper_name} | {model.steps * batch:,} | {cost} | {cells} | "
                     f"{mean_and_std(old_average)} |")  # fmt: skip
    return "\n".join(lines)


def difference_table(scores: Scores, tasks: list[str], recipe: Recipe) -> str:
    """Paired differences per set (points): mean and 95% interval over training seeds."""
    by_role = roles(recipe)
    rows = [
        ("grown", "all-at-once", "the grown MODE against retraining MODE and seed on all sources"),
        ("grown", "before", "what growing changed"),
        ("grown-long", "all-at-once", "the same, its new expert trained as long as the seed"),
        ("grown-long", "before", "what growing so changed"),
        ("grown", "dense-all", "the grown MODE against Dense on all sources"),
        ("dense-new", "seed", "what the seed fine-tuned on the new source forgot (and learnt)"),
        ("grown", "dense-new", "the grown MODE against that fine-tuned seed"),
        ("shrunk", "before", "shrunk back against before growing"),
    ]
    lines = ["| a minus b | what it says | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
    for a, b, says in rows:
        if by_role[a] not in scores or by_role[b] not in scores:
            continue
        cells = []
        for t in range(len(tasks)):
            difference = paired_difference(task_values(scores, by_role[a], t), task_values(scores, by_role[b], t))
            cells.append(f"{difference.mean:+.2f} {interval_text(difference)}")
        lines.append(f"| {by_role[a].name} − {by_role[b].name} | {says} | {' | '.join(cells)} |")
    return "\n".join(lines)


def new_expert_weights(seeds: list[SeedFolder], grown: Model, tasks: list[str], old_experts: int) -> list[float]:
    """The routing weight the grown MODE gives its new experts on each task's class prompts, mean over seeds."""
    return [
        fmean(sum(routing_weights(read_json(seed.zeroshot_results(grown, task)))[old_experts:]) for seed in seeds)
        for task in tasks
    ]  # fmt: skip


def shrink_check(seeds: list[SeedFolder], scores: Scores, recipe: Recipe, tasks: list[str]) -> str:
    """Whether the MODE shrunk back is the MODE before growing: the same experts' bytes, the same top-1."""
    by_role = roles(recipe)
    before, n = [expert_digests(seed.model(by_role["before"])) for seed in seeds], by_role["before"].n
    same_experts = before == [expert_digests(seed.model(by_role["shrunk"])) for seed in seeds]
    kept = before == [expert_digests(seed.model(by_role["grown"]))[:n] for seed in seeds]
    gap = max(
        abs(a - b)
        for t in range(len(tasks))
        for a, b in zip(task_values(scores, by_role["shrunk"], t), task_values(scores, by_role["before"], t))
    )
    return (
        f"In every seed, the grown MODE's first {n} experts are byte-identical to the MODE before "
        f"growing (SHA-256 of their tensors): {'yes' if kept else 'NO'}; the MODE shrunk back holds exactly the "
        f"experts of the MODE before growing: {'yes' if same_experts else 'NO'}; the largest top-1 difference between "
        f"the two over seeds and sets: {gap:.2f} points."
    )


def goals(seeds: list[SeedFolder], scores: Scores, tasks: list[str], old: list[int], recipe: Recipe) -> str:
    """For each grown MODE, set by set: against the MODE trained on all sources at once (the goal: within ±1 point),
    against the MODE before growing, and the routing weight its new experts get."""
    by_role = roles(recipe)
    before, at_once = by_role["before"], by_role["all-at-once"]
    verdicts = []
    for grown in (by_role["grown"], by_role["grown-long"]):
        if grown not in scores:
            continue
        weights = new_expert_weights(seeds, grown, tasks, before.n)
        verdicts.append(f"\n`{grown.name}` ({grown.paper_name}):\n")
        for t, task in enumerate(tasks):
            against = paired_difference(task_values(scores, grown, t), task_values(scores, at_once, t))
            if against.interval is None:
                within = "cannot tell (one seed)"
            else:
                low, high = against.interval
                within = "within" if -WITHIN <= low and high <= WITHIN else "not within"
            change = paired_difference(task_values(scores, grown, t), task_values(scores, before, t))
            verdicts.append(
                f"- {task} ({'old' if t in old else 'new'} set): − all at once {against.mean:+.2f} "
                f"{interval_text(against)}, {within} ±{WITHIN:g} (the interval); − before growing {change.mean:+.2f} "
                f"{interval_text(change)}; routing weight on the new expert(s) {weights[t]:.2f}."
            )
    return "\n".join(verdicts).strip()


def write_growth_report(path: str | Path) -> Path:
    folder = JobFolder(Path(path))
    record, timings = read_json(folder.recipe), read_json(folder.timings)
    recipe, sets = recipe_from_json(record), read_json(folder.sources)
    tasks, seeds = list(sets["zeroshot"]), folder.seeds(recipe)
    old = [t for t, task in enumerate(tasks) if task != recipe.arriving_source]
    by_role = roles(recipe)
    scores, incomplete = zero_shot_scores(seeds, list(by_role.values()), tasks)
    batch = read_record(seeds[0].seed_run)["run"]["global_batch_size"]
    grown, before = by_role["grown"], by_role["before"]
    settings = ", ".join(f"{k}={v}" for k, v in record.items() if k != "sources")
    left_out = f" Left out, as some seed has no results for them: {', '.join(incomplete)}." if incomplete else ""
    growing, growing_long = ((by_role[g].steps - before.steps) * batch for g in ("grown", "grown-long"))
    retraining = by_role["all-at-once"].steps * batch
    report = f"""# A MODE that grows, on the `{record["name"]}` recipe{" (smoke run)" if record["smoke"] else ""}

Settings: {settings}.
Wall time: {wall_time(timings)}.

`{before.name}` ({before.paper_name}) and its seed never saw `{recipe.arriving_source}`'s pairs. When they arrive, \
`train/grow.py` embeds their captions with the MODE's router, clusters those that fit none of its fine centres \
beside them, and trains {recipe.new_experts} new expert(s) forked from the MODE's seed for {recipe.expert_steps} \
steps, as the old ones were: `{grown.name}`. Retraining instead means a seed and MODE-{grown.n} on all sources \
(`{by_role["all-at-once"].name}`), or Dense on all of them with as many pairs (`{by_role["dense-all"].name}`); a \
dense model that takes in the new source fine-tunes the seed on it alone, for as many pairs as the new experts \
(`dense-new`). `train/shrink.py` then takes the new expert(s) out again: `{by_role["shrunk"].name}`.

{len(seeds)} training seeds ({", ".join(seed.path.name for seed in seeds)}); each its own data, initial weights and \
clustering. Mean ± standard deviation over seeds; differences paired seed by seed, with 95% Student t intervals.\
{left_out}

## Zero-shot top-1 (%) on the held-out test images

Pairs seen count every training step's, the seed's included, in global batches of {batch}. Taking in the new \
source cost growing {growing:,} pairs ({growing_long:,} with the new experts as long as the seed), retraining \
{retraining:,}: {growing / retraining:.2f} ({growing_long / retraining:.2f}) of it.

{accuracy_table(scores, tasks, old, recipe, batch)}

## Paired differences per set (points, mean [95% interval])

{difference_table(scores, tasks, recipe)}

## The goals

{goals(seeds, scores, tasks, old, recipe)}

## Shrinking back

{shrink_check(seeds, scores, recipe, tasks) if {by_role["shrunk"], before} <= set(scores) else ""}

## Retrieval, recall (%) on held-out image-caption pairs of all sources, mean over seeds

{retrieval_table(seeds, list(scores))}
"""
    write_text(folder.report, report)
    return folder.report
