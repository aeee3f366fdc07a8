"""Model cards from a run's records: the model-index holds the model's own results under the Hub's metric ids, the
card's table every result; no local path is published."""

import json

import pytest
from helpers import make_mode
from huggingface_hub import ModelCard

from modeling_mode.lib.core import files
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.evaluation.inputs import EvaluationArguments
from modeling_mode.lib.evaluation.outputs import results_name
from modeling_mode.lib.evaluation.run import write_results
from modeling_mode.lib.hub import cards
from modeling_mode.lib.hub.cards import published_record
from modeling_mode.lib.publish.model_card import eval_results, hub_metric, model_card

ZERO_SHOT = {
    "task": "zero-shot-image-classification",
    "results": {
        "MODE paper": {"top1": 0.75, "top5": 1.0, "mean_per_class": 0.7},
        "MODE released": {"top1": 0.625, "top5": 0.875, "mean_per_class": 0.6},
        "MODE uniform": {"top1": 0.5, "top5": 0.875, "mean_per_class": 0.5},
        "expert 0": {"top1": 0.375, "top5": 0.75, "mean_per_class": 0.25},
    },
}
RETRIEVAL = {
    "task": "image-text-retrieval",
    "results": {
        "MODE paper": {"image_to_text_R@1": 0.4, "text_to_image_R@5": 0.9},
        "MODE released": {"image_to_text_R@1": 0.3, "text_to_image_R@5": 0.8},
        "expert 0": {"image_to_text_R@1": 0.2, "text_to_image_R@5": 0.7},
    },
}


def evaluated_mode(folder, routing: str):
    """A MODE routed by `routing` whose directory the evaluators wrote to: zero-shot on a local data set, retrieval on
    a Hub one."""
    config = make_mode(num_experts=2, num_fine_clusters=4).config
    config.routing = routing
    config.save_pretrained(folder / "mode")
    (folder / "data" / "pets").mkdir(parents=True)
    for results, dataset in ((ZERO_SHOT, folder / "data" / "pets"), (RETRIEVAL, "org/captions")):
        output = folder / "results" / f"{results['task']}.json"
        write_results(results, EvaluationArguments(str(folder / "mode"), str(dataset), str(output)))
    return folder / "mode"


def index_of(card_data) -> list[tuple]:
    return [
        (r.task_type, r.dataset_type, r.dataset_split, r.metric_type, r.metric_name, r.metric_value)
        for r in card_data.eval_results
    ]


@pytest.mark.parametrize("routing", ["paper", "released"])
def test_the_model_index_holds_the_modes_own_results_under_hub_metric_ids(tmp_path, routing):
    card = model_card(evaluated_mode(tmp_path, routing), "org/mode-clip")

    zero_shot, retrieval = ZERO_SHOT["results"][f"MODE {routing}"], RETRIEVAL["results"][f"MODE {routing}"]
    classification = ("zero-shot-image-classification", "pets", "test", "accuracy")
    recall = ("image-text-retrieval", "org/captions", "test", "recall")
    expected = [
        (*classification, "top-1 accuracy", zero_shot["top1"]),
        (*classification, "top-5 accuracy", zero_shot["top5"]),
        (*classification, "mean per-class accuracy", zero_shot["mean_per_class"]),
        (*recall, "image-to-text recall@1", retrieval["image_to_text_R@1"]),
        (*recall, "text-to-image recall@5", retrieval["text_to_image_R@5"]),
    ]
    assert index_of(card.data) == expected
    assert index_of(ModelCard(str(card)).data) == expected  # as huggingface_hub reads the pushed README back
    # The table shows every result, baselines included; the local data set by its last path component only.
    assert f"The rows of `MODE {routing}` at revision 0 are this model as it runs" in card.text
    assert "| zero-shot-image-classification | pets | test | top1 | expert 0 | 0.375 |" in card.text
    assert "| image-text-retrieval | org/captions | test | image_to_text_R@1 | MODE released | 0.3 |" in card.text
    assert str(tmp_path) not in str(card)


def test_a_model_not_evaluated_says_so(tmp_path):
    make_mode(num_experts=2, num_fine_clusters=4).config.save_pretrained(tmp_path)
    card = model_card(tmp_path, "org/mode-clip")
    assert card.data.eval_results is None and "Not evaluated yet." in card.text


def test_a_clip_models_own_results_are_its_own_row():
    rows = [
        {"task": "t", "dataset": "d", "split": "test", "metric": "top1", "model": "CLIPModel", "value": 0.5},
        {"task": "t", "dataset": "d", "split": "test", "metric": "top1", "model": "MODE paper", "value": 0.7},
    ]
    (result,) = eval_results(rows, results_name({"model_type": "clip"}))
    assert (result.metric_type, result.metric_value) == ("accuracy", 0.5)


@pytest.mark.parametrize(
    "key, hub",
    [
        ("top1", ("accuracy", "top-1 accuracy")),
        ("top5", ("accuracy", "top-5 accuracy")),
        ("mean_per_class", ("accuracy", "mean per-class accuracy")),
        ("image_to_text_R@10", ("recall", "image-to-text recall@10")),
        ("text_to_image_R@1", ("recall", "text-to-image recall@1")),
        ("f1", ("f1", "f1")),  # a metric of no known form stands for itself
    ],
)
def test_hub_metric_ids_and_names(key, hub):
    assert hub_metric(key) == hub


def test_records_are_read_by_the_one_json_reader_then_made_publishable(tmp_path):
    assert cards.read_json is files.read_json  # what modeling_mode.lib.hub.commits imports from here
    record = tmp_path / "assembly.json"
    assert published_record(record, default={}) == {}
    record.write_text(json.dumps({"experts": [str(tmp_path / "runs" / "expert-0"), "org/expert-1"]}))
    assert published_record(record) == {"experts": ["expert-0", "org/expert-1"]}
    record.write_text("{not json")
    with pytest.raises(InputError, match=r"assembly.json is not valid JSON"):
        published_record(record)


def test_the_card_rounds_scores_and_names_the_hub_datasets_trained_on(tmp_path):
    make_mode(num_experts=2, num_fine_clusters=4).config.save_pretrained(tmp_path)
    row = {"task": "zero-shot-image-classification", "dataset": "mnist", "split": "test", "metric": "top1",
           "model": "MODE paper", "value": 0.7310000000000001}  # fmt: skip
    (tmp_path / "eval_results.json").write_text(json.dumps([row]))
    (tmp_path / "local-pairs").mkdir()
    for dataset, datasets in [("org/pairs", ["org/pairs"]), (str(tmp_path / "local-pairs"), None)]:
        (tmp_path / "assembly.json").write_text(json.dumps({"clustering": {"dataset": dataset}}))
        card = model_card(tmp_path, "org/mode-clip")
        assert card.data.datasets == datasets  # a local folder names nothing others can find
    assert "| top1 | MODE paper | 0.731 | 0 |" in card.text and card.data.eval_results[0].metric_value == 0.731
