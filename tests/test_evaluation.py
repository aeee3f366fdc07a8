"""Evaluators: metrics on constructed logits; the CLIs on a tiny MODE against answers rigged through its forward."""

import json
import socket

import datasets
import evaluate
import pytest
import torch
from helpers import RETRIEVAL, ZEROSHOT, make_image_processor, make_tokenizer, random_images, save_mode

from modeling_mode.lib.core import cli
from modeling_mode.lib.core.files import read_json
from modeling_mode.lib.evaluation.inputs import (
    EvaluationArguments,
    RetrievalArguments,
    ZeroShotArguments,
    image_batches,
    strings_from,
)
from modeling_mode.lib.evaluation.run import metric_record, write_results
from modeling_mode.lib.evaluation.scoring import METRICS, classification_metrics, recall_at_k, zero_shot_classification

CLASSES = ["circle", "square", "sneaker"]
TEMPLATE = "a photo of a {c}."


def test_classification_metrics_on_constructed_logits():
    logits = torch.tensor(
        [
            [9.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # label 0: right
            [9.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # label 0: right
            [1.0, 9.0, 0.0, 0.0, 0.0, 0.0],  # label 0: wrong, second
            [1.0, 0.0, 2.0, 3.0, 4.0, 9.0],  # label 1: wrong, sixth
        ]
    )
    metrics = classification_metrics(logits, torch.tensor([0, 0, 0, 1]))
    assert metrics == pytest.approx({"top1": 0.5, "top5": 0.75, "mean_per_class": (2 / 3 + 0) / 2})


def test_recall_at_k_on_constructed_scores():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])  # 2 queries x 3 items
    relevant = torch.tensor([[False, False, True], [True, False, False]])
    assert recall_at_k(scores, relevant, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}


def test_the_metric_modules_load_by_path_with_no_network(monkeypatch):
    def no_network(*_):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # evaluate ignores HF_HUB_OFFLINE: prove it needs none
    accuracy = evaluate.load(str(METRICS / "zero_shot_accuracy"))
    assert accuracy.compute(predictions=[[2, 0], [1, 2]], references=[2, 2], top_k=(1, 2)) == {
        "top1": 0.5,
        "top2": 1.0,
        "mean_per_class": 0.5,
    }
    recall = evaluate.load(str(METRICS / "retrieval_recall" / "retrieval_recall.py"))
    assert recall.compute(predictions=[[3, 1], [0, 2]], references=[[1, 4], [5]], k=(1, 2)) == {"R@1": 0.0, "R@2": 0.5}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_mode(tmp_path_factory.mktemp("model") / "mode")


def accuracy(logits, labels):
    return (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()


def test_benchmark_prompts_and_class_names_by_name_or_file(tmp_path):
    templates = strings_from("imagenet1k", "zeroshot_classification_templates")  # OpenAI's ImageNet set
    assert len(templates) == 80 and all("{c}" in t for t in templates) and "a photo of a {c}." in templates
    assert strings_from("imagenet1k", "classnames")[:2] == ["tench", "goldfish"]
    with pytest.raises(ValueError, match="no classnames for 'cifar10'; it has: caltech101,"):
        strings_from("cifar10", "classnames")
    (tmp_path / "names.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="must hold a JSON list of strings"):
        strings_from(str(tmp_path / "names.json"), "classnames")


@pytest.mark.slow
def test_zero_shot_cli_gives_the_rigged_accuracies(model_dir, tmp_path, capsys):
    from modeling_mode import ModeCLIPModel

    model, tokenizer = ModeCLIPModel.from_pretrained(model_dir).eval(), make_tokenizer()
    images = random_images(8)
    prompts = tokenizer([TEMPLATE.format(c=c) for c in CLASSES], padding=True, return_tensors="pt")
    pixels = make_image_processor()(images=images, return_tensors="pt").pixel_values
    expected = {}  # each ensemble's and expert's logits, from the model's own forward
    with torch.no_grad():
        for routing in ("paper", "released", "uniform"):
            weights = model.route(**prompts, routing=routing)
            expected[f"MODE {routing}"] = model(
                **prompts, pixel_values=pixels, expert_weights=weights
            ).logits_per_image
        for k, expert in enumerate(model.experts):
            expected[f"expert {k}"] = expert(**prompts, pixel_values=pixels).logits_per_image
    # Rig the labels: the routed MODE is right on 6 of the 8 images, wrong on the last two.
    predicted = expected["MODE paper"].argmax(-1).tolist()
    labels = predicted[:6] + [(p + 1) % len(CLASSES) for p in predicted[6:]]
    for i, (image, label) in enumerate(zip(images, labels)):  # imagefolder numbers classes by sorted folder name
        (tmp_path / "folder" / "test" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "folder" / "test" / CLASSES[label] / f"{i}.png")
    (tmp_path / "templates.json").write_text(json.dumps([TEMPLATE]))

    output = tmp_path / "zeroshot.json"
    # Without --trust-remote-code: this package's own classes serve the saved MODE.
    ZEROSHOT.main([
        "--model", str(model_dir), "--dataset", str(tmp_path / "folder"), "--split", "test",
        "--templates", str(tmp_path / "templates.json"), "--output", str(output),
    ])  # fmt: skip
    results = json.loads(output.read_text())

    assert results["num_images"] == 8 and results["num_classes"] == 3
    assert results["results"]["MODE paper"]["top1"] == pytest.approx(0.75)
    for name, logits in expected.items():
        assert results["results"][name]["top1"] == pytest.approx(accuracy(logits, labels)), name
    # The CLI averages template embeddings and normalises them again: equal to route() up to float32 rounding.
    assert results["routing_weights"]["MODE paper"] == pytest.approx(model.route(**prompts).tolist(), abs=1e-5)
    assert "| MODE paper | 75.00 |" in output.with_suffix(".md").read_text()
    assert "| MODE paper |" in capsys.readouterr().out
    # The model card's source: the evaluation's rows in the model's own eval_results.json.
    rows = read_json(model_dir / "eval_results.json")
    routed = next(r for r in rows if r["model"] == "MODE paper" and r["metric"] == "top1")
    assert routed == {
        "task": "zero-shot-image-classification", "dataset": str(tmp_path / "folder"), "split": "test",
        "metric": "top1", "model": "MODE paper", "value": results["results"]["MODE paper"]["top1"],
        "revision": 0,  # the MODE as assembled: no change of its experts yet
    }  # fmt: skip
    record = read_json(output.with_suffix(".evaluate.json"))  # evaluate.save's, with its provenance
    assert record["results"] == results["results"] and record["_evaluate_version"] == evaluate.__version__


@pytest.mark.slow
def test_retrieval_cli_matches_routing_each_query_through_forward(model_dir, tmp_path):
    from modeling_mode import ModeCLIPModel

    model, tokenizer = ModeCLIPModel.from_pretrained(model_dir).eval(), make_tokenizer()
    images = random_images(5, seed=1)
    captions = [["a red circle", "a round red shape"], ["a blue square"], ["a sneaker"], ["a dog", "a puppy"], ["a 7"]]
    datasets.Dataset.from_dict({"image": images, "caption": captions}).save_to_disk(tmp_path / "pairs")
    texts = [c for cs in captions for c in cs]
    owner = torch.tensor([i for i, cs in enumerate(captions) for _ in cs])
    pixels = make_image_processor()(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():  # the paper's routing: all captions form the image-to-text task, each caption its own
        inputs = tokenizer(texts, padding=True, return_tensors="pt")
        image_to_text = model(**inputs, pixel_values=pixels).logits_per_image
        text_to_image = torch.cat(
            [model(**tokenizer([t], return_tensors="pt"), pixel_values=pixels).logits_per_text for t in texts]
        )
    relevant = owner[None, :] == torch.arange(5)[:, None]

    output = tmp_path / "retrieval.json"
    RETRIEVAL.main(
        ["--model", str(model_dir), "--dataset", str(tmp_path / "pairs"), "--split", "train", "--output", str(output)]
    )
    results = json.loads(output.read_text())["results"]["MODE paper"]

    for k, value in recall_at_k(image_to_text, relevant).items():
        assert results[f"image_to_text_{k}"] == pytest.approx(value)
    for k, value in recall_at_k(text_to_image, relevant.t()).items():
        assert results[f"text_to_image_{k}"] == pytest.approx(value)
    assert results["image_to_text_R@10"] == 1.0  # 7 captions: every image's caption is in its top 10


def test_a_bfloat16_mode_evaluates_with_float32_routing(model_dir):
    from modeling_mode import ModeCLIPModel

    images = datasets.Dataset.from_dict({"image": random_images(4)})
    results = {
        dtype: zero_shot_classification(
            ModeCLIPModel.from_pretrained(model_dir, dtype=dtype).eval(),
            make_tokenizer(),
            make_image_processor(),
            image_batches(images, "image", 2),
            [0, 1, 2, 0],
            CLASSES,
            [TEMPLATE],
        )  # fmt: skip
        for dtype in (torch.float32, torch.bfloat16)
    }
    for routing, weights in results[torch.float32]["routing_weights"].items():
        # bfloat16 router embeddings against float32 centroids: the weights moved by 1e-5 here.
        assert results[torch.bfloat16]["routing_weights"][routing] == pytest.approx(weights, abs=1e-3)
    assert results[torch.bfloat16]["results"].keys() == results[torch.float32]["results"].keys()


def test_flags_take_both_spellings_and_the_device_defaults_to_what_torch_sees(tmp_path):
    required = ["--model", "org/clip", "--dataset", "org/data", "--output", str(tmp_path / "results.json")]
    dashed = ["--batch-size", "8", "--label-column", "y", "--trust-remote-code", "--no-eval-results"]
    underscored = ["--batch_size", "8", "--label_column", "y", "--trust_remote_code", "--no_eval_results"]
    arguments = cli.parse(ZeroShotArguments, __doc__, required + dashed)
    assert arguments == cli.parse(ZeroShotArguments, __doc__, required + underscored)
    assert (arguments.batch_size, arguments.label_column, arguments.trust_remote_code) == (8, "y", True)
    assert arguments.eval_results is False and arguments.model_results is None
    assert arguments.device == ("cuda" if torch.cuda.is_available() else "cpu")
    retrieval = cli.parse(RetrievalArguments, __doc__, required + ["--caption-column", "txt", "--device", "cpu"])
    assert (retrieval.caption_column, retrieval.device, retrieval.trust_remote_code) == ("txt", "cpu", False)


def constructed_results(value: float) -> dict:
    return {
        "task": "zero-shot-image-classification",
        "results": {"MODE paper": {"top1": value}, "expert 0": {"top1": 0.1}},
    }


def test_evaluating_again_replaces_that_evaluations_rows_in_eval_results(tmp_path, monkeypatch):
    model, data = tmp_path / "model", tmp_path / "data"
    data.mkdir()
    model.mkdir()

    def evaluated(value, dataset=str(data), split="test", **flags):
        output = tmp_path / "results" / f"{split}.json"
        write_results(
            constructed_results(value), EvaluationArguments(str(model), dataset, str(output), split, **flags)
        )
        return [(r["dataset"], r["split"], r["model"], r["value"]) for r in read_json(model / "eval_results.json")]

    assert evaluated(0.5) == [(str(data), "test", "MODE paper", 0.5), (str(data), "test", "expert 0", 0.1)]
    monkeypatch.chdir(tmp_path)  # the same data set, named by a relative path: the same evaluation
    assert evaluated(0.75, dataset="data") == [
        (str(data), "test", "MODE paper", 0.75),
        (str(data), "test", "expert 0", 0.1),
    ]
    assert len(evaluated(0.25, split="validation")) == 4  # another split: rows of its own
    assert len(evaluated(0.0, dataset="org/other", eval_results=False)) == 4  # --no-eval-results: left as it was
    assert not list(model.glob("*.partial")) and {p.name for p in model.iterdir()} == {
        "eval_results.json",
        ".eval_results.json.lock",  # hidden: never pushed
    }


def test_results_interrupted_while_saving_leave_no_json(tmp_path, monkeypatch):
    results = {"task": "t", "results": {"CLIPModel": {"top1": 0.5}}}
    output, model = tmp_path / "zeroshot.json", tmp_path / "clip"
    model.mkdir()
    arguments = EvaluationArguments(model=str(model), dataset="org/data", output=str(output))

    def crash(*_):
        raise KeyboardInterrupt  # as a kill between the model's rows and the JSON would leave things

    with monkeypatch.context() as patch:
        patch.setattr("modeling_mode.lib.evaluation.run.add_to_eval_results", crash)
        with pytest.raises(KeyboardInterrupt):
            write_results(results, arguments)
    assert not output.exists()  # the main job's done-marker: absent, so the stage runs again
    write_results(results, arguments)
    assert json.loads(output.read_text()) == results | {"model": str(model), "dataset": "org/data", "split": "test"}
    assert output.with_suffix(".md").read_text().startswith("| model")


def test_the_metric_record_needs_no_git_and_says_nothing_outside_a_checkout(tmp_path, monkeypatch, capfd):
    """`evaluate.save` ran git in the current directory: outside a checkout it printed `fatal: not a git repository`
    into every log, and without git it failed after the metrics were computed."""
    results = {"task": "t", "model": "m", "dataset": "d", "split": "test", "results": {"CLIPModel": {"top1": 0.5}}}
    monkeypatch.chdir(tmp_path)  # not a checkout
    record = metric_record(results)
    assert record["results"] == results["results"] and record["_evaluate_version"] == evaluate.__version__
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert metric_record(results)["_git_commit_hash"] is None
    assert "fatal" not in capfd.readouterr().err
