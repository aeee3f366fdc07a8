"""The main job's report: the paper's comparison over training seeds, with intervals; retrieval; the fork point; plots.

For each model, zero-shot top-1 per task as a mean and standard deviation over the job's training seeds, what it
cost in pairs seen, and the paper's number beside it; the paired difference of each model against the dense baseline
with a 95% interval over seeds; whether each of the paper's orderings holds here. Reads what the job's stages wrote
under its folder: `recipe.json`, `timings.json`, `data/sources.json` and, per training seed s, in `seed-<s>/`:
`results/<model>/zeroshot-<task>.json` and `retrieval.json`, `clusters/<name>/clusters.json`, the seed run's record
(`seed/training_args.json`) and the validation curve (`seed_curve.json`, `validation.curve_stage`).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev

from .files import read_json, write_text
from .job import seed_folder
from .training.record import read_record
from .validation import CURVE

ROUTED = "MODE paper"
PHASE_OF = {  # stage name prefix (after the seed folder's) -> phase; the rest is evaluation
    "data": "data",
    "cluster": "clustering",
    "seed": "training",
    "expert": "training",
    "dense": "training",
    "assemble": "assembly",
    "curve": "validation curve",
}
# The paper's name of each kind of model (results folder names: `dense-2`, `mode-minilm-4`, ...), in table order.
PAPER_NAMES = {
    "seed": "Seed (fork point)",
    "dense": "Dense",
    "dense-n": "Dense, MODE-{n}'s pairs",
    "mode-minilm-n": "MODE-{n}",
    "full-n": "Full-{n}",
    "mode-onestep-n": "OneStep-{n}",
    "mode-random-n": "Random-{n}",
    "mode-seedtext-n": "SeedText-{n}",
}
# The paper's zero-shot top-1, average over 26 tasks (%), ViT-B/32 trained on 400M pairs (Ma et al., CVPR 2024: the
# main table and the ablations; SeedText-2 is its clustering with the seed CLIP's text embeddings).
PAPER = {
    "Dense": 58.2,
    "MODE-2": 58.6,
    "MODE-4": 59.0,
    "Full-2": 58.3,
    "OneStep-2": 58.0,
    "Random-2": 57.7,
    "SeedText-2": 58.3,
}
# The paper's orderings (a, relation, b): ">" a beats b; "~" no difference (Full-2 58.3 against Dense 58.2).
ORDERINGS = [
    ("MODE-2", ">", "Full-2"),
    ("Full-2", "~", "Dense"),
    ("Dense", ">", "OneStep-2"),
    ("OneStep-2", ">", "Random-2"),
    ("MODE-4", ">", "MODE-2"),
]
RETRIEVAL_METRICS = ["image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"]

# ----------------------------------------------------------------------------------------------------- statistics

# Student's t quantile t(0.975; df) of two-sided 95% intervals, for df = 1..9 (the standard table, 3 decimals); from
# df = 10 on, the Cornish-Fisher expansion around the normal quantile is within 1e-4 of it.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)
Z_975 = 1.959964


def t_975(df: int) -> float:
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    terms = (z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + sum(term / df**power for power, term in enumerate(terms, start=1))


@dataclass(frozen=True)
class Estimate:
    """A mean over K training seeds' values, their sample standard deviation (K - 1 in the denominator) and the
    mean's 95% Student t interval (K - 1 degrees of freedom). With one seed, neither of the last two exists: None."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return fmean(self.values)

    @property
    def std(self) -> float | None:
        return stdev(self.values) if len(self.values) > 1 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.std is None:
            return None
        half = t_975(len(self.values) - 1) * self.std / math.sqrt(len(self.values))
        return self.mean - half, self.mean + half

    @property
    def excludes_zero(self) -> bool | None:
        return None if self.interval is None else self.interval[0] > 0 or self.interval[1] < 0


def paired_difference(values, baseline) -> Estimate:
    """The per-seed differences values[s] - baseline[s]: both models share seed s's data order, initial weights and
    clustering, so pairing removes what the seed does to both."""
    return Estimate(tuple(a - b for a, b in zip(values, baseline, strict=True)))


def ordering_verdict(relation: str, difference: Estimate) -> tuple[str, str]:
    """(whether the paper's ordering `a relation b` holds here, whether the interval of a - b excludes zero).

    '>' holds when the mean paired difference is positive. '~' holds when the interval contains zero: no difference
    was detected (which is not evidence of equality); one seed cannot tell."""
    excluded = difference.excludes_zero
    excludes_zero = "no interval (one seed)" if excluded is None else "yes" if excluded else "no"
    if relation == ">":
        return ("yes" if difference.mean > 0 else "no"), excludes_zero
    return ("cannot tell (one seed)" if excluded is None else "no" if excluded else "yes"), excludes_zero


def mean_and_std(estimate: Estimate, digits: int = 1) -> str:
    mean = f"{estimate.mean:.{digits}f}"
    return mean if estimate.std is None else f"{mean} ± {estimate.std:.{digits}f}"


def interval_text(estimate: Estimate) -> str:
    if estimate.interval is None:
        return "none (one seed)"
    low, high = estimate.interval
    return f"[{low:+.2f}, {high:+.2f}]"


# ----------------------------------------------------------------------------------------------------- the models


def model_kind(name: str) -> tuple[str, int | None]:
    """'mode-minilm-4' -> ('mode-minilm-n', 4); 'dense' -> ('dense', None)."""
    stem, _, n = name.rpartition("-")
    return (f"{stem}-n", int(n)) if stem and n.isdigit() else (name, None)


def paper_name(name: str) -> str:
    kind, n = model_kind(name)
    return PAPER_NAMES.get(kind, name).format(n=n)


def table_order(name: str) -> tuple:
    kind, n = model_kind(name)
    return list(PAPER_NAMES).index(kind) if kind in PAPER_NAMES else len(PAPER_NAMES), n or 0, name


def pairs_seen(name: str, recipe: dict, global_batch: int) -> int:
    """Training pairs that went into a model, the seed's included: the seed's steps, then the rest of the schedule
    (Dense), or n times expert_steps (n experts, Full-n's n forks, or dense-n re-stretched to as many pairs)."""
    if name == "seed":
        steps = recipe["seed_steps"]
    elif name == "dense":
        steps = recipe["seed_steps"] + recipe["expert_steps"]
    else:
        steps = recipe["seed_steps"] + model_kind(name)[1] * recipe["expert_steps"]
    return steps * global_batch


def rows_of(results: dict) -> dict[str, dict]:
    """One row per way of using a model: a MODE's routings and its best single expert, or the CLIP model itself."""
    per_name = results["results"]
    if "CLIPModel" in per_name:
        return {"": per_name["CLIPModel"]}
    experts = {name: values for name, values in per_name.items() if name.startswith("expert")}
    best = max(experts, key=lambda name: next(iter(experts[name].values())))  # by the first metric
    return {
        "routed (paper)": per_name[ROUTED],
        "routed (released)": per_name["MODE released"],
        "uniform": per_name["MODE uniform"],
        "best expert": experts[best],  # the best single expert on this task, as the paper reports it
    }


def main_row(name: str) -> str:
    """The row that stands for a model in the comparison: a MODE's paper routing; Full-n's uniform average (its
    forks all trained on all pairs: no cluster to route to); a CLIP itself."""
    if name.startswith("full-"):
        return "uniform"
    return "routed (paper)" if name.startswith("mode-") else ""


# ----------------------------------------------------------------------------------------------------- the scores


def seed_folders(folder: Path, recipe: dict) -> list[Path]:
    """The folders of the job's training seeds: `seed-<s>` for s = seed, ..., seed + seeds - 1 (`job.training_seeds`).
    A folder of another seed (an earlier run's, with more seeds) is not this job's comparison."""
    return [seed_folder(folder, s) for s in range(recipe["seed"], recipe["seed"] + recipe["seeds"])]


def zero_shot_rows(results: Path, tasks: list[str]) -> dict[str, list[float]]:
    """{row: [top-1 % per task]} of one model in one seed."""
    per_task = [rows_of(read_json(results / f"zeroshot-{task}.json")) for task in tasks]
    return {row: [100 * rows[row]["top1"] for rows in per_task] for row in per_task[0]}


def zero_shot_scores(seeds: list[Path], tasks: list[str]) -> tuple[dict, list[str]]:
    """{model: {row: [[top-1 % per task] per seed]}} of the models every seed has, in table order; and the models
    some seed lacks."""
    per_seed = [{m.name: zero_shot_rows(m, tasks) for m in (seed / "results").iterdir()} for seed in seeds]
    everywhere = set.intersection(*(set(models) for models in per_seed))
    scores = {
        model: {row: [models[model][row] for models in per_seed] for row in per_seed[0][model]}
        for model in sorted(everywhere, key=table_order)
    }
    return scores, sorted(set.union(*(set(models) for models in per_seed)) - everywhere)


def task_averages(per_seed: list[list[float]]) -> tuple[float, ...]:
    return tuple(fmean(values) for values in per_seed)


def main_averages(scores: dict, model: str) -> tuple[float, ...]:
    return task_averages(scores[model][main_row(model)])


# ----------------------------------------------------------------------------------------------------- the tables


def zero_shot_table(scores: dict, tasks: list[str], recipe: dict, global_batch: int) -> str:
    dense_pairs = pairs_seen("dense", recipe, global_batch)
    lines = [
        "| model | the paper's name | pairs seen | × Dense | " + " | ".join(tasks) + " | average | paper |",
        "|---" * (len(tasks) + 6) + "|",
    ]
    for model, rows in scores.items():
        per_seed = rows[main_row(model)]
        cells = [mean_and_std(Estimate(tuple(values[t] for values in per_seed))) for t in range(len(tasks))]
        pairs, name = pairs_seen(model, recipe, global_batch), paper_name(model)
        lines.append(
            f"| {model} | {name} | {pairs:,} | {pairs / dense_pairs:.2f} | {' | '.join(cells)} | "
            f"{mean_and_std(Estimate(task_averages(per_seed)))} | {PAPER.get(name, '')} |"
        )
    return "\n".join(lines)


def difference_table(scores: dict) -> str:
    dense = main_averages(scores, "dense")
    lines = ["| model | the paper's name | minus Dense | 95% interval | per seed |", "|---" * 5 + "|"]
    for model in scores:
        if model != "dense":
            difference = paired_difference(main_averages(scores, model), dense)
            per_seed = ", ".join(f"{value:+.2f}" for value in difference.values)
            cells = f"{difference.mean:+.2f} | {interval_text(difference)} | {per_seed}"
            lines.append(f"| {model} | {paper_name(model)} | {cells} |")
    return "\n".join(lines)


def orderings_table(scores: dict) -> str:
    by_paper_name = {paper_name(model): main_averages(scores, model) for model in scores}
    lines = [
        "| the paper's ordering | here: a minus b | 95% interval | holds here | interval excludes 0 |",
        "|---" * 5 + "|",
    ]
    for a, relation, b in ORDERINGS:
        paper = f"{a} {PAPER[a]} {relation} {b} {PAPER[b]}"
        if a not in by_paper_name or b not in by_paper_name:
            lines.append(f"| {paper} | not run | | | |")
            continue
        difference = paired_difference(by_paper_name[a], by_paper_name[b])
        holds, excludes_zero = ordering_verdict(relation, difference)
        lines.append(f"| {paper} | {difference.mean:+.2f} | {interval_text(difference)} | {holds} | {excludes_zero} |")
    return "\n".join(lines)


def ensemble_table(scores: dict) -> str:
    """Each ensemble's ways of use on the task average: the routings, the uniform average, its best expert."""
    ways = ["routed (paper)", "routed (released)", "uniform", "best expert"]
    lines = ["| model | the paper's name | " + " | ".join(ways) + " |", "|---" * (len(ways) + 2) + "|"]
    for model, rows in scores.items():
        if "" not in rows:
            cells = " | ".join(mean_and_std(Estimate(task_averages(rows[way]))) for way in ways)
            lines.append(f"| {model} | {paper_name(model)} | {cells} |")
    return "\n".join(lines)


def retrieval_table(seeds: list[Path], models: list[str]) -> str:
    lines = ["| model | " + " | ".join(RETRIEVAL_METRICS) + " |", "|---" * (len(RETRIEVAL_METRICS) + 1) + "|"]
    for model in models:
        per_seed = [rows_of(read_json(seed / "results" / model / "retrieval.json")) for seed in seeds]
        for row in per_seed[0]:
            cells = " | ".join(f"{100 * fmean(rows[row][m] for rows in per_seed):.1f}" for m in RETRIEVAL_METRICS)
            lines.append(f"| {f'{model} {row}'.strip()} | {cells} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- the fork point


def curve_section(folder: Path, seeds: list[Path], recipe: dict) -> str:
    """Where the experts fork on the seed's validation curve, in words, with its plot."""
    if recipe["sources"]["dataset"] is not None:
        return (
            "The training pairs are the user's own (`--dataset`): nothing was held out of them, so there is no "
            "validation curve."
        )
    curves = {seed.name: read_json(seed / CURVE) for seed in seeds if (seed / CURVE).is_file()}
    if not curves:
        return f"No validation curve was computed (`seed-<s>/{CURVE}`, `validation.curve_stage`)."
    fork, end = recipe["seed_steps"], recipe["seed_steps"] + recipe["expert_steps"]
    plot_curves(curves, fork, end, folder / "seed_curve.png")
    sample = next(iter(curves.values()))[0]  # the first checkpoint: its step, validation pairs and sources
    first = sample["step"]
    points = [{point["step"]: point for point in curve} for curve in curves.values()]

    def at(step: int, score=lambda point: point["loss"]) -> Estimate:
        return Estimate(tuple(score(curve[step]) for curve in points))

    def top1(point: dict) -> float:
        return 100 * fmean(point["top1"].values())

    start, at_fork, at_end = at(first), at(fork), at(end)
    share = Estimate(tuple(100 * (a - f) / (a - e) for a, f, e in zip(start.values, at_fork.values, at_end.values)))
    over = f"mean ± standard deviation over {len(curves)} seeds" if len(curves) > 1 else "one seed"
    return f"""The seed's and the dense run's checkpoints, scored on validation pairs drawn from the training \
sources' train splits, none of them a training pair, with true captions: the contrastive loss averaged over \
{sample["pairs"]} pairs in batches of {min(recipe["batch_size"], sample["pairs"])}, and zero-shot top-1 on their \
images averaged over {", ".join(sample["top1"])} (a source whose train split is all training pairs has none); {over}.

| checkpoint | step | validation loss | zero-shot top-1 (%) |
|---|---|---|---|
| first | {first} | {mean_and_std(start, 3)} | {mean_and_std(at(first, top1))} |
| the fork (the seed the experts start from) | {fork} | {mean_and_std(at_fork, 3)} | {mean_and_std(at(fork, top1))} |
| the end of the schedule (Dense) | {end} | {mean_and_std(at_end, 3)} | {mean_and_std(at(end, top1))} |

The experts fork at step {fork} of {end}, {100 * fork / end:.0f}% of the schedule (the paper: epoch 27 of 32, \
84%); by then the validation loss has made {mean_and_std(share)}% of its decrease from step {first} to the end of \
the schedule.

![validation curve](seed_curve.png)"""


# ----------------------------------------------------------------------------------------------------- the plots


def plot_curves(curves: dict[str, list[dict]], fork: int, end: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, curve in curves.items():
        steps = [point["step"] for point in curve]
        axes[0].plot(steps, [point["loss"] for point in curve], marker=".", label=name)
        axes[1].plot(steps, [100 * fmean(point["top1"].values()) for point in curve], marker=".", label=name)
    for axis, label in zip(axes, ("validation loss", "zero-shot top-1 on validation images (%)")):
        axis.axvline(fork, color="grey", linestyle="--", label=f"fork (step {fork})")
        axis.axvline(end, color="black", linestyle=":", label=f"end of the schedule (step {end})")
        axis.set(xlabel="training step", ylabel=label)
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_cluster_sizes(clusters: Path, path: Path) -> None:
    import matplotlib.pyplot as plt

    clusterings = {c.name: read_json(c / "clusters.json") for c in sorted(clusters.iterdir())}
    figure, axes = plt.subplots(1, len(clusterings), figsize=(3.2 * len(clusterings), 3), squeeze=False)
    for axis, (name, metadata) in zip(axes[0], clusterings.items()):
        sizes = metadata["coarse_sizes"]
        axis.bar(range(len(sizes)), sizes)
        axis.set(title=name, xlabel="expert", ylabel="pairs", xticks=range(len(sizes)))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_routing_weights(results: Path, tasks: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    models = [m for m in sorted(results.iterdir()) if m.name.startswith("mode-")]
    figure, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3), squeeze=False)
    for axis, model in zip(axes[0], models):
        weights = [read_json(model / f"zeroshot-{task}.json")["routing_weights"][ROUTED] for task in tasks]
        bottom = [0.0] * len(tasks)
        for k in range(len(weights[0])):
            column = [w[k] for w in weights]
            axis.bar(tasks, column, bottom=bottom, label=f"expert {k}")
            bottom = [b + c for b, c in zip(bottom, column)]
        axis.set(title=model.name, ylabel="routing weight (paper)", ylim=(0, 1))
        axis.tick_params(axis="x", labelrotation=30)
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_accuracy(scores: dict, tasks: list[str], path: Path) -> None:
    """Each model's top-1 per task: the mean over seeds, and the standard deviation as an error bar."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(12, 4))
    width, colours = 0.8 / len(scores), plt.get_cmap("tab20").colors
    for i, (model, rows) in enumerate(scores.items()):
        per_task = [Estimate(tuple(values[t] for values in rows[main_row(model)])) for t in range(len(tasks))]
        axis.bar(
            [t + i * width for t in range(len(tasks))],
            [estimate.mean for estimate in per_task],
            width,
            yerr=[estimate.std or 0.0 for estimate in per_task],
            label=paper_name(model),
            color=colours[i % 20],
        )
    axis.set(xticks=[t + 0.4 - width / 2 for t in range(len(tasks))], xticklabels=tasks, ylabel="zero-shot top-1 (%)")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------- the report


def wall_time(timings: dict) -> str:
    phases = dict.fromkeys(["data", "clustering", "training", "assembly", "validation curve", "evaluation"], 0.0)
    for stage, seconds in timings.items():  # e.g. "seed-0/expert-minilm-2-0"
        phases[PHASE_OF.get(stage.rpartition("/")[2].split("-")[0], "evaluation")] += seconds
    spent = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in phases.items())
    return f"{spent}; total {sum(timings.values()) / 60:.1f} min (each stage's in `timings.json`, its log in `logs/`)"


def write_report(folder: str | Path) -> Path:
    folder = Path(folder)
    recipe, timings = read_json(folder / "recipe.json"), read_json(folder / "timings.json")
    sources = read_json(folder / "data" / "sources.json")
    tasks, seeds = list(sources["zeroshot"]), seed_folders(folder, recipe)
    scores, incomplete = zero_shot_scores(seeds, tasks)
    global_batch = read_record(seeds[0] / "seed")["run"]["global_batch_size"]
    plot_routing_weights(seeds[0] / "results", tasks, folder / "routing_weights.png")
    plot_accuracy(scores, tasks, folder / "accuracy.png")
    plots = ["![routing weights per task, the first seed](routing_weights.png)", "![accuracy per task](accuracy.png)"]
    if (seeds[0] / "clusters").is_dir():
        plot_cluster_sizes(seeds[0] / "clusters", folder / "cluster_sizes.png")
        plots.insert(0, "![pairs per expert, the first seed's clusterings](cluster_sizes.png)")
    start = recipe["sources"]["init"] or "random weights"
    total_steps = recipe["seed_steps"] + recipe["expert_steps"]
    settings = ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "sources")
    spread = (
        f"{len(seeds)} training seeds ({', '.join(seed.name for seed in seeds)}; each its own data order, initial "
        "weights and clustering): mean ± standard deviation over seeds"
        if len(seeds) > 1
        else "one training seed: no standard deviation or interval exists, and differences of a point or so are "
        "noise that one seed cannot measure"
    )
    left_out = f" Left out, as some seed has no results for them: {', '.join(incomplete)}." if incomplete else ""
    report = f"""# MODE on the `{recipe["name"]}` recipe{" (smoke run)" if recipe["smoke"] else ""}

Settings: {settings}.
Training pairs: `{sources["pairs"]["dataset"]}` ({sources["pairs"]["split"]}); the seed started from {start}.
Wall time: {wall_time(timings)}.

## Zero-shot classification, top-1 accuracy (%) on held-out test images

{spread}.{left_out}

`seed` is where the experts fork: the seed CLIP at step {recipe["seed_steps"]} of its {total_steps}-step schedule \
(the paper forks at epoch 27 of 32). **Dense** (`dense`) is the paper's dense baseline: the seed's own schedule run \
to its end on all pairs. `dense-<n>` re-stretches the seed's schedule to as many pairs as seed + n experts see (equal \
pairs, not the paper's baseline: its learning rate rises again at the fork). **MODE-n** (`mode-minilm-<n>`): n \
experts on clusters of all-MiniLM-L6-v2 caption embeddings (the paper's SimCSE role), fine then coarse; \
**OneStep-n**: clustered straight into n; **Random-n**: a random split; **SeedText-n**: clusters in the seed CLIP's \
text space; all routed with the paper's formula. **Full-n** (`full-<n>`): n forks of the seed, each on all pairs in \
its own order, averaged uniformly: the paper's equal-compute control for the ensemble. Pairs seen count the seed's, \
in global batches of {global_batch}; × Dense is the share of the dense baseline's (the paper's MODE-n costs (27 + \
5n)/32). `paper`: the paper's 26-task average (ViT-B/32, 400M pairs): compare its orderings, not its values, with \
this scale's.

{zero_shot_table(scores, tasks, recipe, global_batch)}

### Against the dense baseline: paired differences of the task average (points)

Each model's task average minus Dense's, seed by seed (the same seed's data order, initial weights and \
clustering), then their mean and its 95% Student t interval over seeds (K - 1 degrees of freedom).

{difference_table(scores)}

### The paper's orderings

A `>` ordering holds here when the mean paired difference a - b is positive; `~` (no difference) when its 95% \
interval contains zero, which says no difference was detected, not that there is none.

{orderings_table(scores)}

### Ways of using each ensemble (task average)

{ensemble_table(scores)}

## Retrieval, recall (%) on held-out image-caption pairs, mean over seeds

{retrieval_table(seeds, list(scores))}

## Where the experts fork: the seed's validation curve

{curve_section(folder, seeds, recipe)}

## Plots

{chr(10).join(plots)}
"""
    write_text(folder / "report.md", report)
    return folder / "report.md"
