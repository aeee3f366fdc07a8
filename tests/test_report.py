"""The main job's report (statistics over training seeds, the paper's orderings, the tables) and the fork-point curve.

The report is written from a hand-made job folder of results in eval/zeroshot.py's and eval/retrieval.py's format,
for two training seeds; the curve from a tiny seed run and dense run trained here, on the offline corpus's images.
"""

import math
import shutil

import datasets
import matplotlib.pyplot
import pytest
import torch
from helpers import reset_accelerate_state

from modeling_mode.job import plots
from modeling_mode.job.arguments import Sources
from modeling_mode.job.experiments import Comparison
from modeling_mode.job.fork_curve import curve_finished, held_out_indices, validation_sources, write_curve
from modeling_mode.job.layout import JobFolder, comparison
from modeling_mode.job.recipes import recipe_from_json
from modeling_mode.job.report import write_report
from modeling_mode.job.stages import StageGraph
from modeling_mode.job.statistics import Estimate, chance_ceiling, ordering_verdict, paired_difference, t_975
from modeling_mode.lib.core.files import read_json, write_json
from modeling_mode.lib.data.offline_corpus import SOURCES, caption_pairs, pick_indices
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.loop import train

# --------------------------------------------------------------------------------------------------- statistics


def test_mean_standard_deviation_and_interval_by_hand():
    three = Estimate((60.0, 62.0, 64.0))
    # mean 62; sample variance (4 + 0 + 4) / 2 = 4, sd 2; half-width t(0.975; 2) * sd / sqrt(3) = 4.303 * 2 / 1.7321
    assert three.mean == 62.0 and three.std == pytest.approx(2.0)
    assert three.interval == pytest.approx((62 - 4.96867, 62 + 4.96867), abs=1e-3)  # t from the 3-decimal table
    assert three.excludes_zero
    one = Estimate((61.5,))
    assert (one.mean, one.std, one.interval, one.excludes_zero) == (61.5, None, None, None)


def test_paired_difference_and_its_interval_by_hand():
    # differences 0.5, 1.0, 1.5: mean 1.0, sd 0.5, half-width 4.303 * 0.5 / sqrt(3) = 1.24217: the interval holds 0
    difference = paired_difference((60.5, 61.0, 62.5), (60.0, 60.0, 61.0))
    assert difference.values == pytest.approx((0.5, 1.0, 1.5))
    assert difference.interval == pytest.approx((1 - 1.24217, 1 + 1.24217), abs=1e-3)
    assert difference.excludes_zero is False
    # differences 1.0, 1.2, 0.8, 1.0: sd sqrt(0.08 / 3) = 0.163299, half-width 3.182 * 0.163299 / 2 = 0.259809
    narrow = paired_difference((61.0, 61.2, 60.8, 61.0), (60.0, 60.0, 60.0, 60.0))
    assert narrow.interval == pytest.approx((1 - 0.259809, 1 + 0.259809), abs=1e-3) and narrow.excludes_zero
    with pytest.raises(ValueError):  # the seeds of the two models must pair up
        paired_difference((1.0, 2.0), (1.0,))


def test_seeds_that_would_resolve_a_difference():
    # sd 0.2828 (of 1.0 and 0.6): t(4) * sd / sqrt(5) = 0.351 > 0.3, t(5) * sd / sqrt(6) = 0.297: six seeds
    assert Estimate((1.0, 0.6)).seeds_for(0.3) == 6
    assert Estimate((1.0, 1.0)).seeds_for(0.3) == 2  # no spread: the least number that has an interval
    assert Estimate((0.4,)).seeds_for(0.3) is None  # one seed: no spread to go by
    assert Estimate((0.0, 100.0)).seeds_for(0.3, most=50) is None


def test_t_quantiles_match_the_standard_table():
    table = {
        1: 12.706,
        2: 4.303,
        4: 2.776,
        9: 2.262,
        10: 2.228,
        15: 2.131,
        20: 2.086,
        30: 2.042,
        60: 2.000,
        120: 1.980,
    }
    for df, quantile in table.items():
        assert t_975(df) == pytest.approx(quantile, abs=1e-3), df


def test_ordering_verdicts():
    positive_but_unsure = paired_difference((61.0, 62.6), (60.0, 62.0))  # +1.0, +0.6
    assert ordering_verdict(">", positive_but_unsure) == ("yes", "no")
    assert ordering_verdict("~", positive_but_unsure) == ("yes", "no")  # no difference detected
    sure = Estimate((2.0, 2.2))
    assert ordering_verdict(">", sure) == ("yes", "yes")
    assert ordering_verdict("~", sure) == ("no", "yes")
    assert ordering_verdict(">", Estimate((-0.4, -0.2))) == ("no", "no")
    one_seed = ("cannot tell (one seed)", "no interval (one seed)")
    assert ordering_verdict(">", Estimate((0.3,))) == ordering_verdict("~", Estimate((0.3,))) == one_seed
    assert ordering_verdict(">", sure, at_chance=True) == ("cannot tell (both at chance)", "yes")
    assert ordering_verdict("~", Estimate((0.3,)), at_chance=True)[0] == "cannot tell (one seed, both at chance)"


def test_chance_ceiling_is_guessings_97_5_percent_quantile():
    # 30 guesses among 10 classes: P(at most 6 right) = 0.9744, P(at most 7) = 0.9894: 7 of 30 is the quantile.
    assert chance_ceiling(10, 30) == pytest.approx(100 * 7 / 30)
    assert chance_ceiling(24, 30) == pytest.approx(100 * 4 / 30)  # easy-VQA's 24 classes: P(<= 3) 0.962, P(<= 4) 0.990
    assert chance_ceiling(10, 200) == pytest.approx(14.5)  # 100 images, 2 seeds: P(<= 28) 0.970, P(<= 29) 0.978


def test_names_and_pairs_seen():
    models = {model.name: model for model in comparison(recipe_from_json(RECIPE))}
    names = [
        "seed",
        "dense",
        "dense-2",
        "mode-minilm-4",
        "mode-onestep-2",
        "mode-random-2",
        "mode-seedtext-2",
        "full-2",
    ]
    assert [models[name].paper_name for name in names] == [
        "Seed (fork point)",
        "Dense",
        "Dense, MODE-2's pairs",
        "MODE-4",
        "OneStep-2",
        "Random-2",
        "SeedText-2",
        "Full-2",
    ]
    assert [models[name].steps * 128 for name in names] == [
        600 * 128,
        700 * 128,
        800 * 128,
        1000 * 128,
        *[800 * 128] * 4,
    ]


# --------------------------------------------------------------------------------------------------- the report

TASKS = ["digits", "shapes"]
# Each model's task average (%) in seeds 0 and 1, in its row of the comparison (a MODE's paper routing, Full-n's
# uniform average, a CLIP itself). Task "digits" is 5 points above the average, "shapes" 5 below.
AVERAGES = {
    "seed": (55.0, 57.0),
    "dense": (60.0, 62.0),
    "dense-2": (60.5, 62.5),
    "mode-minilm-2": (61.0, 62.6),
    "mode-minilm-4": (63.0, 64.8),
    "full-2": (60.2, 62.4),
    "mode-onestep-2": (60.5, 62.5),
    "mode-random-2": (59.0, 61.6),
    "mode-seedtext-2": (60.0, 61.0),
}
RECIPE = {
    "name": "offline-mix",
    "smoke": False,
    "seeds": 2,
    "fine_clusters": 64,
    "experts": [2, 4],
    "random_experts": 2,
    "full_experts": [2],
    "onestep_experts": [2],
    "caption_attributes": False,
    "batch_size": 128,
    "warmup_steps": 50,
    "learning_rate": 1e-3,
    "seed_steps": 600,
    "expert_steps": 100,
    "seed": 0,
    "train_per_source": 8000,
    "sources": {"dataset": None, "split": "train", "init": None},
}


def classification(top1: float) -> dict:
    return {"top1": top1, "top5": min(1.0, top1 + 0.2), "mean_per_class": top1}


def zero_shot_results(model: str, average: float, task_offset: float) -> dict:
    """A results JSON as eval/zeroshot.py writes it, top-1 `average + task_offset` (%) in the model's own row."""
    top1 = (average + task_offset) / 100
    if not model.startswith(("mode-", "full-")):
        results, weights = {"CLIPModel": classification(top1)}, {}
    else:
        # Full-n stands for itself with its uniform average; a MODE with its paper routing. The other rows are set
        # apart, so that a wrong row shows in the report's numbers.
        uniform, paper = (top1, top1 - 0.1) if model.startswith("full-") else (top1 - 0.005, top1)
        results = {
            "MODE paper": classification(paper),
            "MODE released": classification(top1 - 0.01),
            "MODE uniform": classification(uniform),
            "expert 0": classification(top1 - 0.02),
            "expert 1": classification(top1 - 0.03),
        }
        weights = {"MODE paper": [0.7, 0.3], "MODE released": [0.6, 0.4], "MODE uniform": [0.5, 0.5]}
    return {"task": "zero-shot-image-classification", "num_images": 100, "num_classes": 10, "num_templates": 1,
            "routing_weights": weights, "results": results}  # fmt: skip


def retrieval_results(model: str, recall: float) -> dict:
    metrics = {f"{direction}_R@{k}": recall for direction in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    rows = (
        ["CLIPModel"] if not model.startswith(("mode-", "full-")) else ["MODE paper", "MODE released", "MODE uniform"]
    )
    rows += ["expert 0", "expert 1"] if len(rows) > 1 else []
    return {"task": "image-text-retrieval", "num_images": 20, "num_texts": 20, "results": dict.fromkeys(rows, metrics)}


def curve_points(losses: tuple[float, float, float], last_of: dict[str, float]) -> list[dict]:
    """The seed's and Dense's checkpoints (validation top-1 60% on average), then the last of the other dense runs
    (`last_of`: {run: Fashion-MNIST top-1}; MNIST's 20 points above)."""
    steps_and_runs = [(300, "seed"), (600, "seed"), (700, "dense")]
    points = [
        {"step": step, "run": run, "loss": loss, "pairs": 384, "top1": {"fashion_mnist": 0.5, "mnist": 0.7}}
        for (step, run), loss in zip(steps_and_runs, losses)
    ]
    steps = {"dense-2": 800, "dense-wide": 700}
    for run, top1 in last_of.items():
        scores = {"fashion_mnist": top1, "mnist": top1 + 0.2}
        points.append({"step": steps[run], "run": run, "loss": 1.0, "pairs": 384, "top1": scores})
    return points


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory):
    """A finished job's folder, by hand: two training seeds' results, clusterings, records and validation curves."""
    folder = tmp_path_factory.mktemp("job")
    write_json(folder / "recipe.json", RECIPE)
    timings = {"data": 6.0, "seed-0/seed": 100.0, "seed-0/expert-minilm-2-0": 20.0, "seed-0/curve": 3.0}
    write_json(folder / "timings.json", timings | {"seed-1/zeroshot-dense-digits": 7.0, "seed-1/expert-full-2-1": 9.0})
    sets = {task: {"dataset": str(folder / "data" / "eval" / task), "split": "test"} for task in TASKS}
    retrieval = {"dataset": str(folder / "data" / "retrieval"), "split": "test", "caption_column": "caption"}
    pairs = {"dataset": str(folder / "data" / "pairs"), "split": "train"}
    write_json(folder / "data" / "sources.json", {"pairs": pairs, "zeroshot": sets, "retrieval": retrieval})
    losses = [(3.0, 2.0, 1.5), (3.2, 2.2, 1.6)]
    last_of = [{"dense-2": 0.51, "dense-wide": 0.6}, {"dense-2": 0.505, "dense-wide": 0.61}]
    # MODE-2's clustering: 90% of the digits' source's pairs in expert 0, 80% of the shapes' in expert 1
    sources, coarse_ids = ["digits"] * 10 + ["shapes"] * 10, [0] * 9 + [1] + [0] * 2 + [1] * 8
    for s in range(2):
        seed = folder / f"seed-{s}"
        write_json(seed / "seed" / "training_args.json", {"run": {"global_batch_size": 128}})
        write_json(seed / "clusters" / "minilm-2" / "clusters.json", {"coarse_sizes": [10_000, 14_000]})
        labelled = datasets.Dataset.from_dict({"source": sources, "coarse_id": coarse_ids})
        labelled.save_to_disk(seed / "clusters" / "minilm-2" / "dataset")
        write_json(seed / "seed_curve.json", curve_points(losses[s], last_of[s]))
        models = dict(AVERAGES, **({"dense-4": (70.0, 0.0)} if s == 0 else {}))  # dense-4: seed 0's only
        for model, averages in models.items():
            for task, offset in zip(TASKS, (5.0, -5.0)):
                write_json(
                    seed / "results" / model / f"zeroshot-{task}.json", zero_shot_results(model, averages[s], offset)
                )
            write_json(seed / "results" / model / "retrieval.json", retrieval_results(model, 0.3 + 0.1 * s))
    return folder


def test_the_report_gives_means_differences_and_orderings_over_seeds(job_folder):
    report = write_report(job_folder).read_text()
    assert "2 training seeds (seed-0, seed-1;" in report
    assert "Left out, as some seed has no results for them: dense-4." in report
    assert "training 129 s" in report and "validation curve 3 s" in report and "evaluation 7 s" in report
    # digits 65, 67: mean 66, sd sqrt(2) = 1.41; the paper's 26-task average beside.
    assert "| dense | Dense | 89,600 | 1.00 | 66.0 ± 1.4 | 56.0 ± 1.4 | 61.0 ± 1.4 | 58.2 |" in report
    assert "| mode-minilm-4 | MODE-4 | 128,000 | 1.43 | 68.9 ± 1.3 | 58.9 ± 1.3 | 63.9 ± 1.3 | 59.0 |" in report
    assert "| seed | Seed (fork point) | 76,800 | 0.86 |" in report
    # Full-2 by its uniform average (60.2, 62.4: mean 61.3, sd 2.2 / sqrt(2) = 1.56), not its paper routing.
    assert "| full-2 | Full-2 | 102,400 | 1.14 | 66.3 ± 1.6 | 56.3 ± 1.6 | 61.3 ± 1.6 | 58.3 |" in report
    # Two seeds: a paired difference's half-width is t(0.975; 1) * sd / sqrt(2) = 12.706 * |d0 - d1| / 2.
    # MODE-2 - Dense: +1.0, +0.6 -> mean +0.80, half-width 12.706 * 0.2 = 2.5412.
    assert "| mode-minilm-2 | MODE-2 | +0.80 | [-1.74, +3.34] | +1.00, +0.60 |" in report
    # MODE-4 - MODE-2: +2.0, +2.2 -> +2.10, half-width 1.2706: the interval excludes 0.
    assert "| MODE-4 59.0 > MODE-2 58.6 | +2.10 | [+0.83, +3.37] | yes | yes | 4 |" in report
    # MODE-2 - Dense, as an ordering: sd 0.2828 of +1.0, +0.6; 6 seeds would give t(5) * 0.2828 / sqrt(6) = 0.297.
    assert "| MODE-2 58.6 > Dense 58.2 | +0.80 | [-1.74, +3.34] | yes | no | 6 |" in report
    # MODE-2 - Full-2: +0.8, +0.2 -> +0.50, half-width 12.706 * 0.3 = 3.8118; sd 0.4243 needs 11 seeds for 0.3.
    assert "| MODE-2 58.6 > Full-2 58.3 | +0.50 | [-3.31, +4.31] | yes | no | 11 |" in report
    # Full-2 - Dense: +0.2, +0.4 -> +0.30, half-width 1.2706: no difference detected, as the paper's '~'.
    assert "| Full-2 58.3 ~ Dense 58.2 | +0.30 | [-0.97, +1.57] | yes | no | 4 |" in report
    # Dense - OneStep-2: -0.5 in both seeds: the opposite of the paper's, with an interval of width 0.
    assert "| Dense 58.2 > OneStep-2 58.0 | -0.50 | [-0.50, -0.50] | no | yes | 2 |" in report
    # OneStep-2 - Random-2: +1.5, +0.9 -> +1.20, half-width 3.8118.
    assert "| OneStep-2 58.0 > Random-2 57.7 | +1.20 | [-2.61, +5.01] | yes | no | 11 |" in report
    # MODE-2's ways of use: paper 61.8, released 1 point below, uniform 0.5 below, the best expert (0) 2 below.
    assert "| mode-minilm-2 | MODE-2 | 61.8 ± 1.1 | 60.8 ± 1.1 | 61.3 ± 1.1 | 59.8 ± 1.1 |" in report
    assert "| dense | 35.0 | 35.0 | 35.0 | 35.0 |" in report  # retrieval: recall 0.3 and 0.4, averaged
    assert "| mode-minilm-2 routed (paper) | 35.0 |" in report
    # The fork: losses 3.0 -> 2.0 -> 1.5 and 3.2 -> 2.2 -> 1.6: 66.7% and 62.5% of the decrease before the fork.
    assert "| the fork (the seed the experts start from) | 600 | 2.100 ± 0.141 | 60.0 ± 0.0 |" in report
    assert "| the end of the schedule (Dense) | 700 | 1.550 ± 0.071 |" in report
    assert "by then the validation loss has made 64.6 ± 2.9% of its decrease from step 300 to the end" in report
    # The regime on validation: dense-2 61.0, 60.5 against Dense's 60.0: +1.0, +0.5 -> +0.75, half-width
    # 12.706 * 0.3536 / sqrt(2) = 3.1765; twice as wide 70.0, 71.0: +10.0, +11.0 -> +10.50, half-width 6.353.
    assert "| Dense, minus the fork | 700 | 60.0 ± 0.0 | +0.00 [+0.00, +0.00] |" in report
    assert "| dense-2, minus Dense | 800 | 60.8 ± 0.4 | +0.75 [-2.43, +3.93] |" in report
    assert "| dense-wide, minus Dense | 700 | 70.5 ± 0.7 | +10.50 [+4.15, +16.85] |" in report
    assert "dense-2 does not beat Dense beyond its 95% interval; a dense model twice as wide beats" in report
    # What each expert learnt: MODE-2's expert 0 holds 90% of the digits: 2 points below MODE-2's routed 66.0, 67.6,
    # so 64.0, 65.6 against Dense's 65, 67: -1.0, -1.4 -> -1.20, half-width 2.5412; routed +1.0, +0.6.
    assert "| MODE-2 | digits | 0.90 | 64.8 | 66.0 | -1.20 [-3.74, +1.34] | +0.80 [-1.74, +3.34] |" in report
    # the shapes: expert 1 (80%), 3 points below the routed 56.0, 57.6 -> 53.0, 54.6 against 55, 57: -2.0, -2.4
    assert "| MODE-2 | shapes | 0.80 | 53.8 | 56.0 | -2.20 [-4.74, +0.34] | +0.80 [-1.74, +3.34] |" in report
    for plot in ["cluster_sizes", "routing_weights", "accuracy", "seed_curve"]:
        assert (job_folder / f"{plot}.png").stat().st_size > 0 and f"({plot}.png)" in report


def test_one_seed_gives_no_interval_and_a_missing_model_is_not_run(job_folder, tmp_path):
    folder = tmp_path / "job"
    shutil.copytree(job_folder, folder)
    write_json(folder / "recipe.json", {**RECIPE, "seeds": 1})  # seed-1, left by an earlier run of 2, is not read
    shutil.rmtree(folder / "seed-0" / "results" / "mode-minilm-4")
    report = write_report(folder).read_text()
    assert "one training seed: no standard deviation or interval exists" in report
    assert "| dense | Dense | 89,600 | 1.00 | 65.0 | 55.0 | 60.0 | 58.2 |" in report
    assert "| mode-minilm-2 | MODE-2 | +1.00 | none (one seed) | +1.00 |" in report
    assert (
        "| Full-2 58.3 ~ Dense 58.2 | +0.20 | none (one seed) | cannot tell (one seed) | no interval (one seed) |  |"
        in (report)
    )
    assert "| MODE-4 59.0 > MODE-2 58.6 | not run | | | | |" in report


def test_no_verdict_on_an_ordering_of_two_models_at_chance(job_folder, tmp_path):
    folder = tmp_path / "job"
    shutil.copytree(job_folder, folder)
    # Dense and Full-2 at 11% and 14% on both tasks (10 classes, 100 images, 2 seeds: chance is up to 14.5%);
    # OneStep-2 at 15% on one task, so above chance
    for model, averages, offsets in [("dense", (11.0, 11.0), (0, 0)), ("full-2", (14.0, 14.0), (0, 0)),
                                     ("mode-onestep-2", (12.0, 13.0), (3.0, -3.0))]:  # fmt: skip
        for s, average in enumerate(averages):
            for task, offset in zip(TASKS, offsets):
                write_json(folder / f"seed-{s}" / "results" / model / f"zeroshot-{task}.json",
                           zero_shot_results(model, average, offset))  # fmt: skip
    report = write_report(folder).read_text()
    assert "guessing a class at random for each image stays under with 97.5% probability (digits 14.5%, " in report
    # Full-2 - Dense: +3.0 in both seeds: an interval of width 0 that excludes 0, and yet no verdict
    assert "| Full-2 58.3 ~ Dense 58.2 | +3.00 | [+3.00, +3.00] | cannot tell (both at chance) | yes | 2 |" in report
    # OneStep-2 (15.0 and 9.0 in seed 0; 16.0 and 10.0 in seed 1) is above chance on the digits: a verdict
    assert "| Dense 58.2 > OneStep-2 58.0 | -1.50 | [-7.85, +4.85] | no | no |" in report


def test_a_users_dataset_has_no_curve(job_folder, tmp_path):
    folder = tmp_path / "job"
    shutil.copytree(job_folder, folder)
    write_json(folder / "recipe.json", {**RECIPE, "sources": {**RECIPE["sources"], "dataset": "org/pairs"}})
    graph = StageGraph(
        JobFolder(folder), Comparison(recipe_from_json(RECIPE)), Sources(dataset="org/pairs"), "an/encoder"
    )
    seed = JobFolder(folder).replicate(0)
    stage = graph.curve_stage(seed)
    stage.action()  # holds nothing out: empty, at once
    assert stage.output.is_finished()  # an empty curve scores no run, and is finished
    assert read_json(seed.curve) == []
    assert "nothing was held out of them, so there is no validation curve" in write_report(folder).read_text()


def test_every_plot_has_a_title_and_a_readable_legend_beside_its_charts(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "save", lambda figure, path: figures.append(figure))
    curve = [{"step": step, "loss": 3.0 - step / 10, "top1": {"mnist": 0.1 * step}} for step in (2, 4, 6)]
    plots.plot_curves({"seed-0": curve, "seed-1": curve}, 4, 6, tmp_path / "curve.png")
    plots.plot_cluster_sizes({"minilm-2": [10, 14], "minilm-4": [5, 6, 7, 6]}, tmp_path / "sizes.png")
    weights = {"mode-minilm-2": [[0.7, 0.3], [0.2, 0.8]], "mode-minilm-4": [[0.4, 0.3, 0.2, 0.1]] * 2}
    plots.plot_routing_weights(weights, ["mnist", "easy_vqa"], tmp_path / "weights.png")
    accuracy = {f"model {i}": [Estimate((60.0, 62.0)), Estimate((50.0,))] for i in range(12)}
    plots.plot_accuracy(accuracy, ["mnist", "easy_vqa"], tmp_path / "accuracy.png")
    legend_entries = []
    for figure in figures:
        figure.canvas.draw()  # lays the figure out, as saving it does
        assert figure.get_suptitle()
        charts_end = max(axis.get_window_extent().x1 for axis in figure.axes)
        for legend in figure.legends:
            assert legend.get_window_extent().x0 >= charts_end  # beside the charts, hiding none of their bars
            assert all(text.get_fontsize() >= plots.LEGEND_FONTSIZE for text in legend.get_texts())
            legend_entries.append([text.get_text() for text in legend.get_texts()])
        assert all(axis.get_legend() is None for axis in figure.axes)  # one legend a figure
        matplotlib.pyplot.close(figure)
    fork, end = "fork (step 4)", "end of the schedule (step 6)"
    experts = [f"expert {k}" for k in range(4)]  # the chart with the most experts gives the legend
    assert legend_entries == [["seed-0", "seed-1", fork, end], experts, [f"model {i}" for i in range(12)]]


# --------------------------------------------------------------------------------------------------- the curve


@pytest.mark.slow
def test_validation_images_are_none_of_the_training_pairs():
    train_count, count, seed = 300, 50, 0
    held_out = validation_sources(train_count, count, seed)
    for (name, load), validation in zip(SOURCES.items(), held_out):
        whole = load(split="train")
        picked = pick_indices(len(whole.labels), train_count, seed)
        # job.build_offline_pairs draws the split's images at `pick_indices`: disjoint indices, disjoint images.
        training = load(split="train", count=train_count, seed=seed)
        assert [image.tobytes() for image in training.images] == [whole.images[i].tobytes() for i in picked], name
        indices = held_out_indices(len(whole.labels), train_count, count, seed)
        assert len(indices) == count and not set(indices) & set(picked), name
        assert validation.source == name and validation.labels == [whole.labels[i] for i in indices]
        assert [image.tobytes() for image in validation.images] == [whole.images[i].tobytes() for i in indices]
    assert held_out_indices(1682, 8000, 200, 0) == []  # easy-VQA's split, all of it training pairs by default


@pytest.fixture
def one_thread():
    """Tiny models run no slower on one thread, and much faster when the other core is busy (a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_curve_has_a_finite_loss_per_checkpoint_of_the_seed_and_dense_runs(tmp_path, one_thread):
    recipe = dict(RECIPE, train_per_source=16, batch_size=8)
    corpus = [load(split="train", count=16, seed=0) for load in SOURCES.values()]
    caption_pairs(corpus, noise=0.1, seed=0).save_to_disk(tmp_path / "data" / "pairs")
    seed = tmp_path / "seed-0"
    schedule = dict(dataset=str(tmp_path / "data" / "pairs"), batch_size=8, max_steps=6, warmup_steps=1)
    schedule.update(checkpoint_every=2, num_workers=0, report_to="none")
    for run in [
        ExpertTrainingArguments(**schedule, output=str(seed / "seed"), config="tiny", stop_at_step=4),
        ExpertTrainingArguments(**schedule, output=str(seed / "models" / "dense"), init=str(seed / "seed")),
    ]:
        train(run)
        reset_accelerate_state()  # the next run gets its own
    runs, path = {"seed": seed / "seed", "dense": seed / "models" / "dense"}, seed / "seed_curve.json"
    recipe = recipe_from_json(dict(recipe, validation_per_source=12))
    write_curve(path, runs, recipe, holds_out=True, last_of={"dense-wide": seed / "models" / "dense"})
    curve = read_json(path)
    steps = [(2, "seed"), (4, "seed"), (6, "dense"), (6, "dense-wide")]  # the last checkpoint only of `last_of`'s
    assert [(point["step"], point["run"]) for point in curve] == steps
    assert curve_finished(path, ["seed", "dense", "dense-wide"]) and not curve_finished(path, ["seed", "dense-2"])
    assert all(math.isfinite(point["loss"]) and point["pairs"] == 32 for point in curve)  # 36 pairs: 4 batches of 8
    assert all(sorted(point["top1"]) == sorted(SOURCES) for point in curve)
    assert all(0 <= top1 <= 1 for point in curve for top1 in point["top1"].values())
