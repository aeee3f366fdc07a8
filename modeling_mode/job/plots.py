"""The report's plots, each drawn from numbers the report has read (matplotlib, imported when a plot is drawn).

Every figure has a title saying what it shows, and one legend, right of its charts, at a size that reads at the
report's width (matplotlib's `constrained` layout makes room for both)."""

from pathlib import Path
from statistics import fmean

from .statistics import Estimate

LEGEND_FONTSIZE = 9


def figure_with_charts(title: str, num_charts: int, size: tuple[float, float]):
    """A titled figure and its row of `num_charts` charts."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, num_charts, figsize=size, squeeze=False, layout="constrained")
    figure.suptitle(title)
    return figure, list(axes[0])


def legend(figure, axis) -> None:
    """The figure's legend, from `axis`'s entries (those every chart shares, or the most complete chart's)."""
    figure.legend(*axis.get_legend_handles_labels(), loc="outside right upper", fontsize=LEGEND_FONTSIZE)


def plot_curves(curves: dict[str, list[dict]], fork: int, end: int, path: Path) -> None:
    """Each training seed's fork-point curve: validation loss and zero-shot top-1 by step, the fork and the end."""
    figure, axes = figure_with_charts("Where the experts fork: the seed's validation curve", 2, (11, 3.8))
    for name, curve in curves.items():
        steps = [point["step"] for point in curve]
        axes[0].plot(steps, [point["loss"] for point in curve], marker=".", label=name)
        axes[1].plot(steps, [100 * fmean(point["top1"].values()) for point in curve], marker=".", label=name)
    for axis, label in zip(axes, ("validation loss", "zero-shot top-1 on validation images (%)")):
        axis.axvline(fork, color="grey", linestyle="--", label=f"fork (step {fork})")
        axis.axvline(end, color="black", linestyle=":", label=f"end of the schedule (step {end})")
        axis.set(xlabel="training step", ylabel=label)
    legend(figure, axes[0])
    save(figure, path)


def plot_cluster_sizes(sizes: dict[str, list[int]], path: Path) -> None:
    """{clustering: pairs per expert}: one bar chart each."""
    title = "Training pairs per expert, each clustering (the first training seed)"
    figure, axes = figure_with_charts(title, len(sizes), (max(6.4, 3.2 * len(sizes)), 3.4))
    for axis, (name, counts) in zip(axes, sizes.items()):
        axis.bar(range(len(counts)), counts)
        axis.set(title=name, xlabel="expert", ylabel="pairs", xticks=range(len(counts)))
    save(figure, path)


def plot_routing_weights(weights: dict[str, list[list[float]]], tasks: list[str], path: Path) -> None:
    """{ensemble: its routing's expert weights per task}: stacked bars, one chart per ensemble; expert k has the
    same colour in every chart."""
    title = "Routing weights per task, the paper's formula (the first training seed)"
    figure, axes = figure_with_charts(title, len(weights), (max(6.4, 3.2 * len(weights) + 1.5), 3.6))
    for axis, (model, per_task) in zip(axes, weights.items()):
        bottom = [0.0] * len(tasks)
        for k in range(len(per_task[0])):
            column = [w[k] for w in per_task]
            axis.bar(tasks, column, bottom=bottom, label=f"expert {k}", color=f"C{k % 10}")
            bottom = [b + c for b, c in zip(bottom, column)]
        axis.set(title=model, ylabel="routing weight", ylim=(0, 1))
        axis.tick_params(axis="x", labelrotation=30)
    most_experts = max(zip(axes, weights.values()), key=lambda chart: len(chart[1][0]))[0]
    legend(figure, most_experts)
    save(figure, path)


def plot_accuracy(accuracy: dict[str, list[Estimate]], tasks: list[str], path: Path) -> None:
    """{model's label: its top-1 per task over seeds}: the mean as a bar, the standard deviation as an error bar."""
    import matplotlib.pyplot as plt

    title = "Zero-shot top-1 per task: mean over training seeds, standard deviation as error bars"
    figure, (axis,) = figure_with_charts(title, 1, (13, 4.2))
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
    legend(figure, axis)
    save(figure, path)


def save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=100)
    plt.close(figure)
