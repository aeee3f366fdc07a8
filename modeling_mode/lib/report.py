"""The main job's report: zero-shot and retrieval tables (MODE routed, uniform, best expert; dense; random), plots.

Reads what the pipeline's stages wrote under the job's folder: `results/<model>/zeroshot-<task>.json`,
`results/<model>/retrieval.json`, `clusters/<name>/clusters.json`, `data/sources.json`, `recipe.json` and
`timings.json`.
"""

from pathlib import Path

from .files import read_json, write_text

ROUTED = "MODE paper"
PHASE_OF = {  # stage name prefix -> phase; the rest is evaluation
    "data": "data",
    "cluster": "clustering",
    "seed": "training",
    "expert": "training",
    "dense": "training",
    "assemble": "assembly",
}


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


def zero_shot_table(folder: Path, tasks: list[str], metric: str = "top1") -> tuple[str, dict]:
    lines = ["| model | " + " | ".join(tasks) + " | average |", "|---" * (len(tasks) + 2) + "|"]
    scores = {}
    for model in sorted((folder / "results").iterdir()):
        per_task = {task: rows_of(read_json(model / f"zeroshot-{task}.json")) for task in tasks}
        for row in per_task[tasks[0]]:
            values = [100 * per_task[task][row][metric] for task in tasks]
            label = f"{model.name} {row}".strip()
            scores[label] = values
            cells = " | ".join(f"{value:.1f}" for value in values)
            lines.append(f"| {label} | {cells} | {sum(values) / len(values):.1f} |")
    return "\n".join(lines), scores


def retrieval_table(folder: Path) -> str:
    metrics = ["image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for model in sorted((folder / "results").iterdir()):
        for row, values in rows_of(read_json(model / "retrieval.json")).items():
            cells = " | ".join(f"{100 * values[m]:.1f}" for m in metrics)
            lines.append(f"| {f'{model.name} {row}'.strip()} | {cells} |")
    return "\n".join(lines)


def plot_cluster_sizes(folder: Path, path: Path) -> None:
    import matplotlib.pyplot as plt

    clusterings = {c.name: read_json(c / "clusters.json") for c in sorted((folder / "clusters").iterdir())}
    figure, axes = plt.subplots(1, len(clusterings), figsize=(3.2 * len(clusterings), 3), squeeze=False)
    for axis, (name, metadata) in zip(axes[0], clusterings.items()):
        sizes = metadata["coarse_sizes"]
        axis.bar(range(len(sizes)), sizes)
        axis.set(title=name, xlabel="expert", ylabel="pairs", xticks=range(len(sizes)))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_routing_weights(folder: Path, tasks: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    models = [m for m in sorted((folder / "results").iterdir()) if m.name.startswith("mode-")]
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
    import matplotlib.pyplot as plt

    shown = {label: values for label, values in scores.items() if not label.endswith(("(released)", "uniform"))}
    figure, axis = plt.subplots(figsize=(12, 4))
    width, colours = 0.8 / len(shown), plt.get_cmap("tab20").colors
    for i, (label, values) in enumerate(shown.items()):
        axis.bar([t + i * width for t in range(len(tasks))], values, width, label=label, color=colours[i % 20])
    axis.set(xticks=[t + 0.4 - width / 2 for t in range(len(tasks))], xticklabels=tasks, ylabel="zero-shot top-1 (%)")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(folder: str | Path) -> Path:
    folder = Path(folder)
    recipe, timings = read_json(folder / "recipe.json"), read_json(folder / "timings.json")
    sources = read_json(folder / "data" / "sources.json")
    tasks = list(sources["zeroshot"])
    zero_shot, scores = zero_shot_table(folder, tasks)
    plot_cluster_sizes(folder, folder / "cluster_sizes.png")
    plot_routing_weights(folder, tasks, folder / "routing_weights.png")
    plot_accuracy(scores, tasks, folder / "accuracy.png")
    start = recipe["sources"]["init"] or "random weights"
    settings = ", ".join(f"{k}={v}" for k, v in recipe.items() if k != "sources")
    phases = {"data": 0.0, "clustering": 0.0, "training": 0.0, "assembly": 0.0, "evaluation": 0.0}
    for stage, seconds in timings.items():
        phases[PHASE_OF.get(stage.split("-")[0], "evaluation")] += seconds
    report = f"""# MODE on the `{recipe["name"]}` recipe{" (smoke run)" if recipe["smoke"] else ""}

Settings: {settings}.
Training pairs: `{sources["pairs"]["dataset"]}` ({sources["pairs"]["split"]}); the seed started from {start}.
Wall time: {", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in phases.items())}; total \
{sum(timings.values()) / 60:.1f} min (each stage's in `timings.json`, its log in `logs/`).

## Zero-shot classification, top-1 accuracy (%) on held-out test images

`mode-<clustering>-<n>` is MODE with n experts: clustered with all-MiniLM-L6-v2 captions (`minilm`), the seed CLIP's
text tower (`seedtext`), or split at random (`random`, the paper's ablation). `dense-<n>` continues the seed on all
pairs for as many pairs as seed + n experts see; `seed` is the model the experts forked from.

{zero_shot}

## Retrieval, recall (%) on held-out image-caption pairs

{retrieval_table(folder)}

## Plots

![pairs per expert](cluster_sizes.png)
![routing weights per task](routing_weights.png)
![accuracy per task](accuracy.png)
"""
    write_text(folder / "report.md", report)
    return folder / "report.md"
