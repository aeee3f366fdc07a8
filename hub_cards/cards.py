"""Model and dataset cards for a MODE run, rendered from the run's own files with huggingface_hub's card classes.

A MODE model directory holds `config.json` and, beside the weights, the records of how it was made: `assembly.json`
(written by train/assemble.py: the clustering run's metadata and each expert's training record) and
`eval_results.json` (a list of `{"task", "dataset", "split", "metric", "model", "value"}` rows from the evaluators).
Whatever is present goes into the card; nothing is invented, and no local path: a card names a run's inputs by
their last path component (see `without_local_paths`).
"""

import json
import os
from collections import Counter
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from modeling_mode.lib.clustering import read_finished_run
from modeling_mode.lib.errors import InputError

TEMPLATES = Path(__file__).resolve().parent
ROUTING_TEXT = {
    "paper": (
        "Routing follows the paper (Eq. 4-6): each class name l is matched to its nearest fine centre s, "
        "A = exp(-||e_l - e_s||^2 / lambda) with lambda = {router_lambda} (divided by log |L| above 200 classes, "
        "A scaled by exp(0.5 - sqrt |L|) below 10), and p(expert c | task) is proportional to exp(sum of A over "
        "the classes whose nearest centre belongs to c)."
    ),
    "released": (
        "Routing follows the authors' released code: each class votes exp(b (a - d)) for the expert of its "
        "nearest fine centre at distance d (a = exp(0.5 - sqrt |L|) below 10 classes, else 0; "
        "b = 5 log10(max(10, |L| - 200))), and the weights are a softmax of the summed votes divided by "
        "{router_temperature}."
    ),
    "uniform": "The experts are averaged with equal weights.",
}
# Training facts worth a row in the card: flags (`args`) and what the run did (`run`) in each training record.
TRAINING_KEYS = {
    "args": ("max_steps", "batch_size", "learning_rate", "warmup_steps", "weight_decay", "out_of_cluster_ratio"),
    "run": ("cluster", "data_variant", "start", "start_step", "global_batch_size", "num_processes", "mixed_precision"),
}


def without_local_paths(value):
    """`value` (JSON-like) with every string that is an absolute path cut to its last component: a record names an
    expert by its run directory's name, not by where it lay on this machine (of no use to anyone else, and maybe
    private). A Hub id (org/name) is not absolute and stays as it is."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def read_json(path: Path):
    """A run's JSON record as it may be published (without local paths), or None if there is none."""
    if not path.is_file():
        return None
    try:
        return without_local_paths(json.loads(path.read_text()))
    except ValueError as error:
        raise InputError(f"{path} is not valid JSON ({error}).") from error


def mode_config(model_dir: str | Path) -> dict:
    """config.json of the MODE saved in `model_dir`; InputError if there is none."""
    config = read_json(Path(model_dir) / "config.json")
    if not config or config.get("model_type") != "mode_clip":
        raise InputError(
            f"{model_dir} holds no MODE model: config.json is missing or its model_type is not mode_clip."
        )
    return config


def expert_rows(fine_to_coarse: list[int], clustering: dict | None) -> list[dict]:
    """One row per expert: how many fine clusters route to it and, when the clustering recorded them, its pairs."""
    fine_per_expert = Counter(fine_to_coarse)
    pairs = (clustering or {}).get("coarse_sizes") or []
    return [
        {"expert": k, "fine_clusters": fine_per_expert.get(k, 0), "pairs": pairs[k] if k < len(pairs) else "?"}
        for k in range(max(len(pairs), max(fine_to_coarse, default=-1) + 1))
    ]


def training_rows(records: list[dict]) -> list[tuple[str, str]]:
    """Settings rows from the experts' training records; a value that differs between experts is listed per expert."""
    rows = []
    for part, keys in TRAINING_KEYS.items():
        for key in keys:
            values = [str(record[part][key]) for record in records if record.get(part, {}).get(key) is not None]
            if values:
                rows.append((key, ", ".join(dict.fromkeys(values))))
    return rows


def eval_results(rows: list[dict], model_name: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type=row["task"],
            dataset_type=row["dataset"],
            dataset_name=row["dataset"],
            dataset_split=row.get("split"),
            metric_type=row["metric"],
            metric_name=f"{row['metric']} ({row['model']})",
            metric_value=row["value"],
        )
        for row in rows
    ]


def model_card(
    model_dir: str | Path, repo_id: str, license: str = "other", base_model: str | None = None
) -> ModelCard:
    """The model card of the MODE saved in `model_dir`, to be pushed as `repo_id`.

    `base_model` is the Hub id of the checkpoint the seed started from; by default the one the training records name
    (none for a seed trained from scratch).
    """
    model_dir = Path(model_dir)
    config = mode_config(model_dir)
    assembly = read_json(model_dir / "assembly.json") or {}
    clustering, training = assembly.get("clustering"), assembly.get("expert_training") or []
    results = read_json(model_dir / "eval_results.json") or []
    recorded = {record["run"].get("base_model") for record in training} - {None}
    base_model = base_model or (recorded.pop() if len(recorded) == 1 else None)
    model_name = repo_id.split("/")[-1]
    vision = config["expert_config"]["vision_config"]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        license=license,
        base_model=base_model,
        tags=["clip", "mode", "mixture-of-data-experts", "zero-shot-image-classification", "custom_code"],
        model_name=model_name,
        eval_results=eval_results(results, model_name) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_name=model_name,
        repo_id=repo_id,
        num_experts=config["num_experts"],
        num_fine_clusters=config["num_fine_clusters"],
        architecture=f"ViT, {vision['num_hidden_layers']} layers, width {vision['hidden_size']}, "
        f"patch {vision['patch_size']}, {vision['image_size']} px",
        routing_text=ROUTING_TEXT[config["routing"]].format(**config),
        router_top_k=config.get("router_top_k"),
        router_embed_dim=config["router_text_config"]["projection_dim"],
        clustering=clustering,
        expert_rows=expert_rows(config["fine_to_coarse"], clustering),
        training=training_rows(training),
        results=results,
    )


def dataset_card(clusters_dir: str | Path, repo_id: str, license: str = "other") -> DatasetCard:
    """The dataset card of a finished clustering run's output directory; InputError if the run is not finished."""
    clusters, report = read_finished_run(clusters_dir)
    clustering = without_local_paths(report)
    card_data = DatasetCardData(
        license=license,
        pretty_name=f"{repo_id.split('/')[-1]}: MODE clusters",
        tags=["clip", "mode", "clustering", "image-text"],
        task_categories=["zero-shot-image-classification"],
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        dataset_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        clustering=clustering,
        expert_rows=expert_rows(clusters.fine_to_coarse.tolist(), clustering),
    )
