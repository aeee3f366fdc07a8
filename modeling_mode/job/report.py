"""The main job's report: the paper's comparison over training seeds, with intervals; retrieval; the fork point; plots.

For each model, zero-shot top-1 per task as a mean and standard deviation over the job's training seeds, what it
cost in pairs seen, and the paper's number beside it; the paired difference of each model against the dense baseline
with a 95% interval over seeds; whether each of the paper's orderings holds here, or that the job cannot tell. It
reads the job's folder alone, through its layout (`layout`): `recipe.json`, `timings.json`, `data/sources.json` and,
per training seed's replicate, the evaluations' results, the clusterings' reports, the seed run's record and the
fork-point curve. It finds a model by its role (`layout.Role`), a stage's phase from the stage itself.
"""

from pathlib import Path
from statistics import fmean

from ..lib.core.files import read_json, write_text
from ..lib.evaluation.outputs import EXPERT_NAME
from ..lib.training.outputs import read_record
from .arguments import Sources
from .data import read_sets
from .experiments import Comparison, ValidationOnly
from .layout import (
    BEST_EXPERT_ROW,
    CLIP_ROW,
    ENSEMBLE_ROWS,
    PAPER_ROW,
    Ensemble,
    JobFolder,
    Model,
    Pairs,
    Replicate,
    Role,
    result_rows,
    routing_row,
    routing_weights,
    validation_models,
)
from .plots import plot_accuracy, plot_cluster_sizes, plot_curves, plot_routing_weights
from .recipes import recipe_from_json
from .routing_probe import source_shares
from .runner import Phase
from .stages import stage_phases
from .statistics import Estimate, chance_ceiling, interval_text, mean_and_std, ordering_verdict, paired_difference

# The paper's models, by role and number of experts (None: a CLIP), and what the paper calls them.
DENSE, MODE_2, MODE_4, FULL_2 = (Role.DENSE, None), (Role.MODE, 2), (Role.MODE, 4), (Role.FULL, 2)
ONE_STEP_2, RANDOM_2, SEED_TEXT_2 = (Role.ONE_STEP, 2), (Role.RANDOM, 2), (Role.SEED_TEXT, 2)
PAPER_NAMES = {DENSE: "Dense", MODE_2: "MODE-2", MODE_4: "MODE-4", FULL_2: "Full-2", ONE_STEP_2: "OneStep-2",
               RANDOM_2: "Random-2", SEED_TEXT_2: "SeedText-2"}  # fmt: skip
# The paper's zero-shot top-1, average over 26 tasks (%), ViT-B/32 trained on 400M pairs (Ma et al., CVPR 2024: the
# main table and the ablations; SeedText-2 is its clustering with the seed CLIP's text embeddings).
PAPER = {DENSE: 58.2, MODE_2: 58.6, MODE_4: 59.0, FULL_2: 58.3, ONE_STEP_2: 58.0, RANDOM_2: 57.7, SEED_TEXT_2: 58.3}
# The paper's orderings (a, relation, b): ">" a beats b; "~" no difference (Full-2 58.3 against Dense 58.2).
ORDERINGS = [
    (MODE_2, ">", DENSE),
    (MODE_2, ">", FULL_2),
    (FULL_2, "~", DENSE),
    (DENSE, ">", ONE_STEP_2),
    (ONE_STEP_2, ">", RANDOM_2),
    (MODE_4, ">", MODE_2),
]
RESOLVE = 0.3  # points: the half-width of a 95% interval that resolves the differences of a point or less seen here
RETRIEVAL_METRICS = ["image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"]

# Zero-shot top-1 (%) of the comparison's models: {model: {row: [[top-1 per task] per replicate]}}.
Scores = dict[Model, dict[str, list[list[float]]]]


def paper_model(model: Model) -> tuple[Role, int | None]:
    """Which of the paper's models `model` is (a key of `PAPER`, if it is one)."""
    return model.role, model.n if isinstance(model, Ensemble) else None


def dense_baseline(models) -> Model | None:
    """The paper's dense baseline among `models`."""
    return next((model for model in models if model.role is Role.DENSE), None)


# ----------------------------------------------------------------------------------------------------- the scores


def has_results(replicate: Replicate, model: Model, tasks: list[str]) -> bool:
    return replicate.retrieval_results(model).is_file() and all(
        replicate.zeroshot_results(model, t).is_file() for t in tasks
    )


def zero_shot_rows(replicate: Replicate, model: Model, tasks: list[str]) -> dict[str, list[float]]:
    """{row: [top-1 % per task]} of one model in one replicate."""
    per_task = [result_rows(read_json(replicate.zeroshot_results(model, task))) for task in tasks]
    return {row: [100 * rows[row]["top1"] for rows in per_task] for row in per_task[0]}


def zero_shot_scores(replicates: list[Replicate], models: list[Model], tasks: list[str]) -> tuple[Scores, list[str]]:
    """The scores of the models every replicate has results for, in the experiment's order; and the models some
    replicate lacks (a job still running, or an earlier job's training seed)."""
    scores, incomplete = {}, []
    for model in models:
        present = [has_results(replicate, model, tasks) for replicate in replicates]
        if all(present):
            per_replicate = [zero_shot_rows(replicate, model, tasks) for replicate in replicates]
            scores[model] = {row: [rows[row] for rows in per_replicate] for row in per_replicate[0]}
        elif any(present):
            incomplete.append(model.name)
    return scores, sorted(incomplete)


def task_averages(per_replicate: list[list[float]]) -> tuple[float, ...]:
    return tuple(fmean(values) for values in per_replicate)


def main_averages(scores: Scores, model: Model) -> tuple[float, ...]:
    return task_averages(scores[model][model.main_row])


def per_task(per_replicate: list[list[float]], tasks: list[str]) -> list[Estimate]:
    return [Estimate(tuple(values[t] for values in per_replicate)) for t in range(len(tasks))]


def chance_ceilings(replicates: list[Replicate], model: Model, tasks: list[str]) -> list[float]:
    """Each task's top-1 (%) at or under which a mean over the replicates is at chance (`chance_ceiling`): every
    model is scored on the same held-out images."""
    results = [read_json(replicates[0].zeroshot_results(model, task)) for task in tasks]
    return [chance_ceiling(result["num_classes"], result["num_images"] * len(replicates)) for result in results]


def at_chance(per_replicate: list[list[float]], ceilings: list[float]) -> bool:
    """Whether a model's top-1, its mean over the replicates, is at chance on every task."""
    return all(fmean(values[t] for values in per_replicate) <= ceiling for t, ceiling in enumerate(ceilings))


# ----------------------------------------------------------------------------------------------------- the tables


def zero_shot_table(scores: Scores, tasks: list[str], global_batch: int) -> str:
    dense_pairs = dense_baseline(scores).steps * global_batch
    lines = [
        "| model | the paper's name | pairs seen | × Dense | " + " | ".join(tasks) + " | average | paper |",
        "|---" * (len(tasks) + 6) + "|",
    ]
    for model, rows in scores.items():
        per_replicate = rows[model.main_row]
        cells = [mean_and_std(estimate) for estimate in per_task(per_replicate, tasks)]
        pairs = model.steps * global_batch
        lines.append(
            f"| {model.name} | {model.paper_name} | {pairs:,} | {pairs / dense_pairs:.2f} | {' | '.join(cells)} | "
            f"{mean_and_std(Estimate(task_averages(per_replicate)))} | {PAPER.get(paper_model(model), '')} |"
        )
    return "\n".join(lines)


def difference_table(scores: Scores) -> str:
    baseline = dense_baseline(scores)
    dense = main_averages(scores, baseline)
    lines = ["| model | the paper's name | minus Dense | 95% interval | per seed |", "|---" * 5 + "|"]
    for model in scores:
        if model != baseline:
            difference = paired_difference(main_averages(scores, model), dense)
            per_replicate = ", ".join(f"{value:+.2f}" for value in difference.values)
            cells = f"{difference.mean:+.2f} | {interval_text(difference)} | {per_replicate}"
            lines.append(f"| {model.name} | {model.paper_name} | {cells} |")
    return "\n".join(lines)


def lora_table(scores: Scores, tasks: list[str]) -> str:
    """LoRA-n minus MODE-n, seed by seed (the same seed, clustering and router; only the experts' training differs):
    on each task and on their average, with 95% intervals. Empty without LoRA-n."""
    full = {model.n: model for model in scores if model.role is Role.MODE}
    lora = [model for model in scores if model.role is Role.LORA and model.n in full]
    if not lora:
        return ""
    header = f"| LoRA-n minus MODE-n | {' | '.join(tasks)} | average |"
    lines = [header, "|---" * (len(tasks) + 2) + "|"]
    for model in lora:
        mode = full[model.n]
        mine, theirs = scores[model][model.main_row], scores[mode][mode.main_row]
        differences = [
            paired_difference(a.values, b.values) for a, b in zip(per_task(mine, tasks), per_task(theirs, tasks))
        ]
        differences.append(paired_difference(task_averages(mine), task_averages(theirs)))
        cells = " | ".join(f"{d.mean:+.2f} {interval_text(d)}" for d in differences)
        lines.append(f"| {model.name} - {mode.name} | {cells} |")
    return "\n".join(lines)


def lora_section(scores: Scores, tasks: list[str]) -> str:
    table = lora_table(scores, tasks)
    if not table:
        return ""
    return (
        "### LoRA experts against full experts (top-1 points)\n\nLoRA-n's experts are adapters on the seed "
        "(`lora_rank` of the recipe); MODE-n's train every weight, from the same fork, clustering and router. Paired "
        f"seed by seed; mean and 95% Student t interval over seeds.\n\n{table}\n\n"
    )


def orderings_table(scores: Scores, ceilings: list[float]) -> str:
    by_paper_model = {paper_model(model): model for model in scores}
    lines = [
        "| the paper's ordering | here: a minus b | 95% interval | holds here | interval excludes 0 | "
        f"seeds for ±{RESOLVE} |",
        "|---" * 6 + "|",
    ]
    for a, relation, b in ORDERINGS:
        paper = f"{PAPER_NAMES[a]} {PAPER[a]} {relation} {PAPER_NAMES[b]} {PAPER[b]}"
        if a not in by_paper_model or b not in by_paper_model:
            lines.append(f"| {paper} | not run | | | | |")
            continue
        models = by_paper_model[a], by_paper_model[b]
        difference = paired_difference(*(main_averages(scores, model) for model in models))
        both_at_chance = all(at_chance(scores[model][model.main_row], ceilings) for model in models)
        holds, excludes_zero = ordering_verdict(relation, difference, at_chance=both_at_chance)
        needed = difference.seeds_for(RESOLVE)
        cells = f"{holds} | {excludes_zero} | {'' if needed is None else needed}"
        lines.append(f"| {paper} | {difference.mean:+.2f} | {interval_text(difference)} | {cells} |")
    return "\n".join(lines)


def chance_text(ceilings: list[float], tasks: list[str]) -> str:
    return ", ".join(f"{task} {ceiling:.1f}%" for task, ceiling in zip(tasks, ceilings))


def ensemble_table(scores: Scores) -> str:
    """Each ensemble's ways of use on the task average: the routings, the uniform average, its best expert."""
    lines = [
        "| model | the paper's name | " + " | ".join(ENSEMBLE_ROWS) + " |",
        "|---" * (len(ENSEMBLE_ROWS) + 2) + "|",
    ]
    for model, rows in scores.items():
        if model.main_row != CLIP_ROW:
            cells = " | ".join(mean_and_std(Estimate(task_averages(rows[row]))) for row in ENSEMBLE_ROWS)
            lines.append(f"| {model.name} | {model.paper_name} | {cells} |")
    return "\n".join(lines)


def retrieval_table(replicates: list[Replicate], models: list[Model]) -> str:
    lines = ["| model | " + " | ".join(RETRIEVAL_METRICS) + " |", "|---" * (len(RETRIEVAL_METRICS) + 1) + "|"]
    for model in models:
        per_replicate = [result_rows(read_json(replicate.retrieval_results(model))) for replicate in replicates]
        for row in per_replicate[0]:
            cells = " | ".join(f"{100 * fmean(rows[row][m] for rows in per_replicate):.1f}" for m in RETRIEVAL_METRICS)
            lines.append(f"| {f'{model.name} {row}'.strip()} | {cells} |")
    return "\n".join(lines)


def routing_table(replicates: list[Replicate], models: list[Model]) -> str:
    """Each routed ensemble's routing on every task under each template family (`routing_probe`), mean over
    replicates."""
    routed = [model for model in models if all(replicate.routing_results(model).is_file() for replicate in replicates)]
    if not routed:
        return "No routing probe was run (`results/<model>/routing.json`, `routing_probe`)."
    rows = [PAPER_ROW, routing_row("uniform"), BEST_EXPERT_ROW]
    header = ["model", "task", "templates", "routing mass on the source's experts (ceiling)", *rows]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|---" * (4 + len(rows)) + "|")
    for model in routed:
        per_replicate = [read_json(replicate.routing_results(model)) for replicate in replicates]
        for task, families in per_replicate[0].items():
            for family, probed in families.items():
                values = [probe[task][family] for probe in per_replicate]
                mass = "" if probed["routing_mass"] is None else (
                    f"{fmean(v['routing_mass'] for v in values):.2f} "
                    f"({fmean(v['routing_mass_ceiling'] for v in values):.2f})"
                )  # fmt: skip
                cells = " | ".join(f"{100 * fmean(v[row] for v in values):.1f}" for row in rows)
                label = f"{family} ({probed['num_templates']})"
                lines.append(f"| {model.name} | {task} | {label} | {mass} | {cells} |")
    return "\n".join(lines)


def specialisation_table(replicates: list[Replicate], scores: Scores, tasks: list[str]) -> str:
    """For each MODE-n clustered on the captions and each task, the expert whose cluster holds most of the task's
    source's training pairs, alone, against Dense on that task (the specialisation gain), beside the routed MODE's
    gain: what the experts learnt, and what routing kept of it. Needs the clusterings' labelled copies with a
    `source` column (the offline corpus)."""
    dense = dense_baseline(scores)
    routed = [m for m in scores if isinstance(m, Ensemble) and not m.every_pair and m.router == "auto"]
    lines = []
    for model in routed if dense is not None else []:
        shares = [source_shares(replicate.labelled_pairs(model.clustering), model.n) for replicate in replicates]
        for t, task in enumerate(tasks):
            if not all(share and task in share for share in shares):
                continue
            experts = [max(range(model.n), key=share[task].__getitem__) for share in shares]
            results = [read_json(replicate.zeroshot_results(model, task))["results"] for replicate in replicates]
            alone = tuple(100 * result[EXPERT_NAME.format(k=k)]["top1"] for result, k in zip(results, experts))
            base = tuple(values[t] for values in scores[dense][CLIP_ROW])
            gain = paired_difference(alone, base)
            routed_gain = paired_difference(tuple(v[t] for v in scores[model][PAPER_ROW]), base)
            held = fmean(share[task][k] for share, k in zip(shares, experts))
            lines.append(f"| {model.paper_name} | {task} | {held:.2f} | {fmean(alone):.1f} | {fmean(base):.1f} | "
                         f"{gain.mean:+.2f} {interval_text(gain)} | {routed_gain.mean:+.2f} "
                         f"{interval_text(routed_gain)} |")  # fmt: skip
    if not lines:
        return "No clustering here says where each task's source went (the offline corpus's `source` column)."
    header = "| model | task | share of the source in its expert | its expert alone | Dense | expert minus Dense | "
    return "\n".join([header + "routed minus Dense |", "|---" * 7 + "|", *lines])


# ----------------------------------------------------------------------------------------------------- the fork point


def curve_section(folder: JobFolder, replicates: list[Replicate], record: dict) -> str:
    """Where the experts fork on the seed's validation curve, and whether the recipe is in the paper's regime, in
    words, with its plot: validation pairs only. The curve's runs are the validation experiment's models, by name
    (`stages.StageGraph.curve_stage`), whichever experiment made it."""
    if record["sources"]["dataset"] is not None:
        return (
            "The training pairs are the user's own (`--dataset`): nothing was held out of them, so there is no "
            "validation curve."
        )
    curves = {replicate.path.name: read_json(replicate.curve) for replicate in replicates if replicate.curve.is_file()}
    if not curves:
        return f"No validation curve was computed (`seed-<s>/{replicates[0].curve.name}`, `fork_curve.write_curve`)."
    fork, end = record["seed_steps"], record["seed_steps"] + record["expert_steps"]
    roles = {model.name: model.role for model in validation_models(recipe_from_json(record))}
    seed_and_dense = (Role.SEED, Role.DENSE)
    on_curve = {name: [p for p in curve if roles.get(p["run"]) in seed_and_dense] for name, curve in curves.items()}
    plot_curves(on_curve, fork, end, folder.curve_plot)
    sample = next(iter(curves.values()))[0]  # the first checkpoint: its step, validation pairs and sources
    first = sample["step"]
    points = [{point["step"]: point for point in curve} for curve in on_curve.values()]

    def at(step: int, score=lambda point: point["loss"]) -> Estimate:
        return Estimate(tuple(score(curve[step]) for curve in points))

    start, at_fork, at_end = at(first), at(fork), at(end)
    share = Estimate(tuple(100 * (a - f) / (a - e) for a, f, e in zip(start.values, at_fork.values, at_end.values)))
    over = f"mean ± standard deviation over {len(curves)} seeds" if len(curves) > 1 else "one seed"
    return f"""The seed's and the dense run's checkpoints, and the last of every other dense run, scored on \
validation pairs drawn from the training sources' train splits, none of them a training pair, with true captions: the \
contrastive loss averaged over {sample["pairs"]} pairs in batches of {min(record["batch_size"], sample["pairs"])}, \
and zero-shot top-1 on their images averaged over {", ".join(sample["top1"])} (a source whose train split is all \
training pairs has none); {over}. No held-out test image is read.

| checkpoint | step | validation loss | zero-shot top-1 (%) |
|---|---|---|---|
| first | {first} | {mean_and_std(start, 3)} | {mean_and_std(at(first, validation_top1))} |
| the fork (the seed the experts start from) | {fork} | {mean_and_std(at_fork, 3)} | \
{mean_and_std(at(fork, validation_top1))} |
| the end of the schedule (Dense) | {end} | {mean_and_std(at_end, 3)} | {mean_and_std(at(end, validation_top1))} |

The experts fork at step {fork} of {end}, {100 * fork / end:.0f}% of the schedule (the paper: epoch 27 of 32, \
84%); by then the validation loss has made {mean_and_std(share)}% of its decrease from step {first} to the end of \
the schedule.

{regime_section(list(curves.values()), roles, fork, end)}

![validation curve]({folder.curve_plot.name})"""


def validation_top1(point: dict) -> float:
    """A curve point's zero-shot top-1 (%), averaged over the sources with validation images."""
    return 100 * fmean(point["top1"].values())


def regime_section(curves: list[list[dict]], roles: dict[str, Role], fork: int, end: int) -> str:
    """The paper's regime, on validation pairs: the seed has converged at the fork when training on to the end
    (Dense) gains less than one seed differs from another there; then more steps of one model (a re-stretched
    dense-n) should not pay, while more capacity (a model twice as wide) should: where experts can. `roles`: the
    curves' runs' roles, by their names."""
    by_role = {role: name for name, role in roles.items()}
    seed_run, dense_run = by_role[Role.SEED], by_role[Role.DENSE]
    last = [{point["run"]: point for point in curve} for curve in curves]  # a run's last point (a curve is by step)
    seed = Estimate(tuple(validation_top1(next(p for p in c if p["run"] == seed_run and p["step"] == fork))
                          for c in curves))  # fmt: skip
    dense = Estimate(tuple(validation_top1(runs[dense_run]) for runs in last))
    gain = paired_difference(dense.values, seed.values)
    others = sorted({run for runs in last for run in runs} - {seed_run, dense_run})
    rows = [f"| Dense, minus the fork | {end} | {mean_and_std(dense)} | {gain.mean:+.2f} {interval_text(gain)} |"]
    verdicts = []
    for run in others:
        if not all(run in runs for runs in last):
            continue
        scores = Estimate(tuple(validation_top1(runs[run]) for runs in last))
        difference = paired_difference(scores.values, dense.values)
        step = last[0][run]["step"]
        rows.append(f"| {run}, minus Dense | {step} | {mean_and_std(scores)} | {difference.mean:+.2f} "
                    f"{interval_text(difference)} |")  # fmt: skip
        if roles.get(run) is Role.WIDE_DENSE:
            verdicts.append(f"a dense model twice as wide beats Dense by {difference.mean:+.2f} points (capacity "
                            f"binds: {'yes' if difference.mean > 0 else 'no'})")  # fmt: skip
        elif difference.interval is not None:
            beats = difference.interval[0] > 0
            verdicts.append(f"{run} {'beats' if beats else 'does not beat'} Dense beyond its 95% interval")
    if seed.std is None:
        verdicts.insert(0, "one seed: no seed-to-seed spread to compare Dense's gain with")
    else:
        converged = abs(gain.mean) < seed.std
        verdicts.insert(0, f"Dense gains {gain.mean:+.2f} points over the fork, "
                           f"{'less' if converged else 'no less'} than the seeds' spread there (standard deviation "
                           f"{seed.std:.2f})")  # fmt: skip
    table = "\n".join(rows)
    return f"""**The paper's regime, on validation pairs** (zero-shot top-1 %, mean ± sd over seeds; each difference \
paired seed by seed, mean and 95% Student t interval):

| run | step | validation top-1 (%) | difference, 95% interval |
|---|---|---|---|
{table}

{"; ".join(verdicts)}."""


def wall_time(timings: dict, phases: dict[str, Phase]) -> str:
    """The job's time in each phase, from `timings.json` and each stage's `phases`."""
    spent = dict.fromkeys(Phase, 0.0)
    for stage, seconds in timings.items():
        # A stage no experiment of the job makes now: an evaluation of a held-out set since replaced.
        spent[phases.get(stage, Phase.EVALUATION)] += seconds
    spent = ", ".join(f"{phase.value} {seconds:.0f} s" for phase, seconds in spent.items())
    return f"{spent}; total {sum(timings.values()) / 60:.1f} min (each stage's in `timings.json`, its log in `logs/`)"


def draw_plots(folder: JobFolder, replicate: Replicate, scores: Scores, tasks: list[str]) -> list[str]:
    """The plots of the first replicate's clusterings and routings, and of every model's accuracy."""
    routed = [model for model in scores if model.main_row == PAPER_ROW]
    weights = {
        m.name: [routing_weights(read_json(replicate.zeroshot_results(m, task))) for task in tasks] for m in routed
    }
    plot_routing_weights(weights, tasks, folder.routing_weights_plot)
    accuracy = {model.paper_name: per_task(rows[model.main_row], tasks) for model, rows in scores.items()}
    plot_accuracy(accuracy, tasks, folder.accuracy_plot)
    plots = [f"![routing weights per task, the first seed]({folder.routing_weights_plot.name})",
             f"![accuracy per task]({folder.accuracy_plot.name})"]  # fmt: skip
    clusterings = {model.clustering for model in scores if isinstance(model, Ensemble)}
    reports = {c.name: replicate.clustering_report(c) for c in sorted(clusterings, key=lambda c: c.name)}
    sizes = {name: read_json(path)["coarse_sizes"] for name, path in reports.items() if path.is_file()}
    if sizes:
        plot_cluster_sizes(sizes, folder.cluster_sizes_plot)
        plots.insert(0, f"![pairs per expert, the first seed's clusterings]({folder.cluster_sizes_plot.name})")
    return plots


def comparison_phases(folder: JobFolder, record: dict) -> dict[str, Phase]:
    """{stage: phase} of a comparison's stages and its validation experiment's: the one resumes the other in the same
    folder, and either report's wall time counts both."""
    recipe, sources = recipe_from_json(record), Sources.from_record(record["sources"])
    return stage_phases(folder, [ValidationOnly.for_sources(recipe, sources), Comparison(recipe)], record)


def write_report(path: str | Path) -> Path:
    folder = JobFolder(Path(path))
    record, timings = read_json(folder.recipe), read_json(folder.timings)
    recipe, sets = recipe_from_json(record), read_sets(folder)
    tasks, replicates = list(sets.held_out.zeroshot), folder.replicates(recipe)
    scores, incomplete = zero_shot_scores(replicates, Comparison(recipe).models, tasks)
    global_batch = read_record(replicates[0].seed_run)["run"]["global_batch_size"]
    plots = draw_plots(folder, replicates[0], scores, tasks)
    ceilings = chance_ceilings(replicates, next(iter(scores)), tasks)
    start = record["sources"]["init"] or "random weights"
    settings = ", ".join(f"{k}={v}" for k, v in record.items() if k != "sources")
    pairs = sets.training[Pairs.JOB]
    spread = (
        f"{len(replicates)} training seeds ({', '.join(replicate.path.name for replicate in replicates)}; each its "
        "own data order, initial weights and clustering): mean ± standard deviation over seeds"
        if len(replicates) > 1
        else "one training seed: no standard deviation or interval exists, and differences of a point or so are "
        "noise that one seed cannot measure"
    )
    left_out = f" Left out, as some seed has no results for them: {', '.join(incomplete)}." if incomplete else ""
    report = f"""# MODE on the `{record["name"]}` recipe{" (smoke run)" if record["smoke"] else ""}

Settings: {settings}.
Training pairs: `{pairs.dataset}` ({pairs.split}); the seed started from {start}.
Wall time: {wall_time(timings, comparison_phases(folder, record))}.

## Zero-shot classification, top-1 accuracy (%) on held-out test images

{spread}.{left_out}

`seed` is where the experts fork: the seed CLIP at step {recipe.seed_steps} of its {recipe.total_steps}-step \
schedule (the paper forks at epoch 27 of 32). **Dense** (`dense`) is the paper's dense baseline: the seed's own \
schedule run to its end on all pairs. `dense-<n>` re-stretches the seed's schedule to as many pairs as seed + n \
experts see (equal pairs, not the paper's baseline: its learning rate rises again at the fork). **MODE-n** \
(`mode-minilm-<n>`): n experts on clusters of all-MiniLM-L6-v2 caption embeddings (the paper's SimCSE role), fine \
then coarse; **OneStep-n**: clustered straight into n; **Random-n**: a random split; **SeedText-n**: clusters in the \
seed CLIP's text space; all routed with the paper's formula. **Full-n** (`full-<n>`): n forks of the seed, each on \
all pairs in its own order, averaged uniformly: the paper's equal-compute control for the ensemble. Pairs seen count \
the seed's, in global batches of {global_batch}; × Dense is the share of the dense baseline's (the paper's MODE-n \
costs (27 + 5n)/32). `paper`: the paper's 26-task average (ViT-B/32, 400M pairs): compare its orderings, not its \
values, with this scale's.

{zero_shot_table(scores, tasks, global_batch)}

### Against the dense baseline: paired differences of the task average (points)

Each model's task average minus Dense's, seed by seed (the same seed's data order, initial weights and \
clustering), then their mean and its 95% Student t interval over seeds (K - 1 degrees of freedom).

{difference_table(scores)}

### The paper's orderings

A `>` ordering holds here when the mean paired difference a - b is positive; `~` (no difference) when its 95% \
interval contains zero, which says no difference was detected, not that there is none. No verdict (`cannot tell`) \
where the job cannot resolve the ordering: with one training seed, whose difference has no spread to judge it by, or \
when both models are at chance on every task: their mean top-1 at or under what guessing a class at random for \
each image stays under with 97.5% probability ({chance_text(ceilings, tasks)}). `seeds for ±{RESOLVE}`: how \
many training seeds, with this spread of paired differences, would make the interval ±{RESOLVE} points.

{orderings_table(scores, ceilings)}

{lora_section(scores, tasks)}### Ways of using each ensemble (task average)

{ensemble_table(scores)}

## Retrieval, recall (%) on held-out image-caption pairs, mean over seeds

{retrieval_table(replicates, list(scores))}

## What each expert learnt: its own cluster's task, against Dense

Each MODE's expert whose cluster holds most of a task's source's training pairs, alone on that task, against Dense \
(top-1 %, mean over seeds; differences paired seed by seed, mean and 95% interval): the specialisation gain, and \
how much of it the routed MODE keeps.

{specialisation_table(replicates, scores, tasks)}

## Routing on prompts the model never saw

Each routed ensemble's class prompts in other template families than the evaluation's (`routing_probe`): the \
set's clip-benchmark templates where clip-benchmark has them, OpenAI's 80 ImageNet templates, bare class names. The \
routing mass is sum_k w_k share_k, share_k the share of the set's source's training pairs in expert k's cluster \
(1.00: all the weight where the source's pairs went); then the top-1 (%) of the routed ensemble, its uniform \
average and its best expert. Mean over seeds.

{routing_table(replicates, list(scores))}

## Where the experts fork: the seed's validation curve

{curve_section(folder, replicates, record)}

## Plots

{chr(10).join(plots)}
"""
    write_text(folder.report, report)
    return folder.report


def write_validation_report(path: str | Path) -> Path:
    """`--validation-only`'s report, `validation.md`: where the recipe stands on validation pairs, before any test
    set is scored (the fork-point curve and the paper's regime)."""
    folder = JobFolder(Path(path))
    record, timings = read_json(folder.recipe), read_json(folder.timings)
    settings = ", ".join(f"{k}={v}" for k, v in record.items() if k != "sources")
    report = f"""# The `{record["name"]}` recipe on validation pairs{" (smoke run)" if record["smoke"] else ""}

Settings: {settings}.
Wall time: {wall_time(timings, comparison_phases(folder, record))}.

{curve_section(folder, folder.replicates(recipe_from_json(record)), record)}
"""
    write_text(folder.validation_report, report)
    return folder.validation_report
