"""The report's plots, each drawn from numbers the report has read (matplotlib, imported when a plot is drawn)."""

from pathlib import Path
from statistics import fmean

from .statistics import Estimate


def plot_curves(curves: dict[str, list[dict]], fork: int, end: int, path: Path) -> None:
    """Each training seed's fork-point curve: validation loss and zero-shot top-1 by step, the fork and the end."""
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
    save(figure, path)


def plot_cluster_sizes(sizes: dict[str, list[int]], path: Path) -> None:
    """{clustering: pairs per expert}: one bar chart each."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3), squeeze=False)
    for axis, (name, counts) in zip(axes[0], sizes.items()):
        axis.bar(range(len(counts)), counts)
        axis.set(title=name, xlabel="expert", ylabel="pairs", xticks=range(len(counts)))
    save(figure, path)


def plot_routing_weights(weights: dict[str, list[list[float]]], tasks: list[str], path: Path) -> None:
    """{ensemble: its routing's expert weights per task}: stacked bars, one chart per ensemble."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3), squeeze=False)
    for axis, (model, per_task) in zip(axes[0], weights.items()):
        bottom = [0.0] * len(tasks)
        for k in range(len(per_task[0])):
            column = [w[k] for w in per_task]
            axis.bar(tasks, column, bottom=bottom, label=f"expert {k}")
            bottom = [b + c for b, c in zip(bottom, column)]
        axis.set(title=model, ylabel="routing weight (paper)", ylim=(0, 1))
        axis.tick_params(axis="x", labelrotation=30)
        axis.legend(fontsize=6)
    save(figure, path)


def plot_accuracy(accuracy: dict[str, list[Estimate]], tasks: list[str], path: Path) -> None:
    """{model's label: its top-1 per task over seeds}: the mean as a bar, the standard deviation as an error bar."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(12, 4))
    width, colours = 0.8 / len(accuracy), plt.get_cmap("tab20").colors
    for i, (label, per_task) in enumerate(accuracy.items()):
        axis.bar(
            [t + i * width for t in range(len(tasks))],
            [estimate.mean for estimate in per_task],
            width,
            yerr=[estimate.std or 0.0 for estimate in per_task],
            label=label,
            color=colours[i % 20],
        )
    axis.set(xticks=[t + 0.4 - width / 2 for t in range(len(tasks))], xticklabels=tasks, ylabel="zero-shot top-1 (%)")
    axis.legend(fontsize=6, ncol=2)
    save(figure, path)


def save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
