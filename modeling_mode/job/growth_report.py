"""The growth experiment's report (a recipe with an `arriving_source`): MODE-n before and after growing by the
arriving source's experts, against retraining on all sources and a dense model fine-tuned on the new source alone;
shrinking back; what growing costs in pairs. It reads the job's folder alone, as `report.write_report` does, and
finds each model by its role in the experiment (`layout.Role`)."""

from pathlib import Path
from statistics import fmean

from ..lib.core.files import read_json, write_text
from ..lib.growth.outputs import expert_digests
from ..lib.training.outputs import read_record
from .data import read_sets
from .experiments import Growth
from .layout import JobFolder, Model, Replicate, Role, routing_weights
from .recipes import recipe_from_json
from .report import Scores, per_task, retrieval_table, wall_time, zero_shot_scores
from .stages import stage_phases
from .statistics import Estimate, interval_text, mean_and_std, paired_difference

WITHIN = 1.0  # points: the grown MODE's goal against the MODE trained on all sources at once, on every set


def roles(growth: Growth) -> dict[Role, Model]:
    """The growth experiment's models by their role, in the report's order."""
    return {model.role: model for model in growth.models}


def task_values(scores: Scores, model: Model, t: int) -> tuple[float, ...]:
    return tuple(values[t] for values in scores[model][model.main_row])


def accuracy_table(scores: Scores, tasks: list[str], old: list[int], by_role: dict[Role, Model], batch: int) -> str:
    # What growing, or fine-tuning, adds to the MODE before growing and to the seed; retraining costs its all.
    before, seed = by_role[Role.BEFORE_GROWING].steps, by_role[Role.SEED].steps
    to_add = {Role.GROWN: by_role[Role.GROWN].steps - before, Role.GROWN_LONG: by_role[Role.GROWN_LONG].steps - before,
              Role.FINE_TUNED_ON_NEW: by_role[Role.FINE_TUNED_ON_NEW].steps - seed, Role.ALL_AT_ONCE: None,
              Role.DENSE_ALL: None}  # fmt: skip
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


def difference_table(scores: Scores, tasks: list[str], by_role: dict[Role, Model]) -> str:
    """Paired differences per set (points): mean and 95% interval over replicates."""
    rows = [
        (Role.GROWN, Role.ALL_AT_ONCE, "the grown MODE against retraining MODE and seed on all sources"),
        (Role.GROWN, Role.BEFORE_GROWING, "what growing changed"),
        (Role.GROWN_LONG, Role.ALL_AT_ONCE, "the same, its new expert trained as long as the seed"),
        (Role.GROWN_LONG, Role.BEFORE_GROWING, "what growing so changed"),
        (Role.GROWN, Role.DENSE_ALL, "the grown MODE against Dense on all sources"),
        (Role.FINE_TUNED_ON_NEW, Role.SEED, "what the seed fine-tuned on the new source forgot (and learnt)"),
        (Role.GROWN, Role.FINE_TUNED_ON_NEW, "the grown MODE against that fine-tuned seed"),
        (Role.SHRUNK, Role.BEFORE_GROWING, "shrunk back against before growing"),
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


def new_expert_weights(replicates: list[Replicate], grown: Model, tasks: list[str], old_experts: int) -> list[float]:
    """The routing weight the grown MODE gives its new experts on each task's class prompts, mean over replicates."""
    return [
        fmean(sum(routing_weights(read_json(replicate.zeroshot_results(grown, task)))[old_experts:])
              for replicate in replicates)
        for task in tasks
    ]  # fmt: skip


def shrink_check(replicates: list[Replicate], scores: Scores, by_role: dict[Role, Model], tasks: list[str]) -> str:
    """Whether the MODE shrunk back is the MODE before growing: the same experts' bytes, the same top-1."""
    before_growing, shrunk, grown = by_role[Role.BEFORE_GROWING], by_role[Role.SHRUNK], by_role[Role.GROWN]
    before, n = [expert_digests(replicate.model(before_growing)) for replicate in replicates], before_growing.n
    same_experts = before == [expert_digests(replicate.model(shrunk)) for replicate in replicates]
    kept = before == [expert_digests(replicate.model(grown))[:n] for replicate in replicates]
    gap = max(
        abs(a - b)
        for t in range(len(tasks))
        for a, b in zip(task_values(scores, shrunk, t), task_values(scores, before_growing, t))
    )
    return (
        f"In every seed, the grown MODE's first {n} experts are byte-identical to the MODE before "
        f"growing (SHA-256 of their tensors): {'yes' if kept else 'NO'}; the MODE shrunk back holds exactly the "
        f"experts of the MODE before growing: {'yes' if same_experts else 'NO'}; the largest top-1 difference between "
        f"the two over seeds and sets: {gap:.2f} points."
    )


def goals(replicates: list[Replicate], scores: Scores, tasks: list[str], old: list[int],
          by_role: dict[Role, Model]) -> str:  # fmt: skip
    """For each grown MODE, set by set: against the MODE trained on all sources at once (the goal: within ±1 point),
    against the MODE before growing, and the routing weight its new experts get."""
    before, at_once = by_role[Role.BEFORE_GROWING], by_role[Role.ALL_AT_ONCE]
    verdicts = []
    for grown in (by_role[Role.GROWN], by_role[Role.GROWN_LONG]):
        if grown not in scores:
            continue
        weights = new_expert_weights(replicates, grown, tasks, before.n)
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
    recipe, sets = recipe_from_json(record), read_sets(folder)
    tasks, replicates, growth = list(sets.held_out.zeroshot), folder.replicates(recipe), Growth(recipe)
    old = [t for t, task in enumerate(tasks) if task != recipe.arriving_source]
    by_role = roles(growth)
    scores, incomplete = zero_shot_scores(replicates, list(by_role.values()), tasks)
    batch = read_record(replicates[0].seed_run)["run"]["global_batch_size"]
    grown, before, shrunk = by_role[Role.GROWN], by_role[Role.BEFORE_GROWING], by_role[Role.SHRUNK]
    at_once, dense_all, forgetting = (
        by_role[Role.ALL_AT_ONCE],
        by_role[Role.DENSE_ALL],
        by_role[Role.FINE_TUNED_ON_NEW],
    )
    settings = ", ".join(f"{k}={v}" for k, v in record.items() if k != "sources")
    left_out = f" Left out, as some seed has no results for them: {', '.join(incomplete)}." if incomplete else ""
    growing, growing_long = ((by_role[role].steps - before.steps) * batch for role in (Role.GROWN, Role.GROWN_LONG))
    retraining = at_once.steps * batch
    report = f"""# A MODE that grows, on the `{record["name"]}` recipe{" (smoke run)" if record["smoke"] else ""}

Settings: {settings}.
Wall time: {wall_time(timings, stage_phases(folder, [growth], record))}.

`{before.name}` ({before.paper_name}) and its seed never saw `{recipe.arriving_source}`'s pairs. When they arrive, \
`train/grow.py` embeds their captions with the MODE's router, clusters those that fit none of its fine centres \
beside them, and trains {recipe.new_experts} new expert(s) forked from the MODE's seed for {recipe.expert_steps} \
steps, as the old ones were: `{grown.name}`. Retraining instead means a seed and MODE-{grown.n} on all sources \
(`{at_once.name}`), or Dense on all of them with as many pairs (`{dense_all.name}`); a \
dense model that takes in the new source fine-tunes the seed on it alone, for as many pairs as the new experts \
(`{forgetting.name}`). `train/shrink.py` then takes the new expert(s) out again: `{shrunk.name}`.

{len(replicates)} training seeds ({", ".join(replicate.path.name for replicate in replicates)}); each its own data, \
initial weights and \
clustering. Mean ± standard deviation over seeds; differences paired seed by seed, with 95% Student t intervals.\
{left_out}

## Zero-shot top-1 (%) on the held-out test images

Pairs seen count every training step's, the seed's included, in global batches of {batch}. Taking in the new \
source cost growing {growing:,} pairs ({growing_long:,} with the new experts as long as the seed), retraining \
{retraining:,}: {growing / retraining:.2f} ({growing_long / retraining:.2f}) of it.

{accuracy_table(scores, tasks, old, by_role, batch)}

## Paired differences per set (points, mean [95% interval])

{difference_table(scores, tasks, by_role)}

## The goals

{goals(replicates, scores, tasks, old, by_role)}

## Shrinking back

{shrink_check(replicates, scores, by_role, tasks) if {shrunk, before} <= set(scores) else ""}

## Retrieval, recall (%) on held-out image-caption pairs of all sources, mean over seeds

{retrieval_table(replicates, list(scores))}
"""
    write_text(folder.report, report)
    return folder.report
