"""Model and dataset cards for a MODE run, rendered from the run's own files with huggingface_hub's card classes.

A MODE model directory holds `config.json` and, beside the weights, the records of how it was made: `assembly.json`
(written by train/assemble.py: the clustering run's metadata and each expert's training record) and
`eval_results.json` (a list of `{"task", "dataset", "split", "metric", "model", "value"}` rows, which eval/zeroshot.py
and eval/retrieval.py add to a local model's directory). Whatever is present goes into the card; nothing is invented,
and no local path: a card names a run's inputs by their last path component (see `without_local_paths`).
"""

import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ...configuration_mode_clip import MODE_CONFIGS
from ...families import family_of
from ..core.checks import HUB_ID
from ..core.errors import InputError
from ..evaluation.outputs import model_revision, results_name
from ..hub.cards import TEMPLATES, expert_rows, published_record

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
# The Hub's metric id and a readable name for each metric the evaluators report, by the evaluators' metric key.
HUB_METRICS = (
    (r"top(\d+)", "accuracy", "top-{0} accuracy"),
    (r"mean_per_class", "accuracy", "mean per-class accuracy"),
    (r"(\w+)_to_(\w+)_R@(\d+)", "recall", "{0}-to-{1} recall@{2}"),
)
# Training facts worth a row in the card: flags (`args`) and what the run did (`run`) in each training record.
TRAINING_KEYS = {
    "args": ("max_steps", "batch_size", "learning_rate", "warmup_steps", "weight_decay", "out_of_cluster_ratio"),
    "run": ("cluster", "data_variant", "start", "start_step", "global_batch_size", "num_processes", "mixed_precision"),
}


def architecture(config: dict) -> str:
    """The experts' family and vision tower in words, for the card; LoRA experts' rank and layers."""
    vision = config["expert_config"]["vision_config"]
    family = family_of(config["expert_config"].get("model_type", "clip")).title
    resolution = f"{vision['image_size']} px" if "image_size" in vision else f"at most {vision['num_patches']} patches"
    text = (f"{family} experts, ViT, {vision['num_hidden_layers']} layers, width {vision['hidden_size']}, patch "
            f"{vision['patch_size']}, {resolution}")  # fmt: skip
    if config.get("lora_rank"):
        text += (f"; LoRA experts of rank {config['lora_rank']} (alpha {config['lora_alpha']}) on one shared seed, "
                 f"adapting {', '.join(config['lora_target_modules'])}")  # fmt: skip
    return text


def mode_config(model_dir: str | Path) -> dict:
    """config.json of the MODE saved in `model_dir`; InputError if there is none."""
    config = published_record(Path(model_dir) / "config.json")
    if not config or config.get("model_type") not in MODE_CONFIGS:
        raise InputError(
            f"{model_dir} holds no MODE model: config.json is missing or its model_type is not one of "
            f"{', '.join(MODE_CONFIGS)}."
        )
    return config


def training_rows(records: list[dict]) -> list[tuple[str, str]]:
    """Settings rows from the experts' training records; a value that differs between experts is listed per expert."""
    rows = []
    for part, keys in TRAINING_KEYS.items():
        for key in keys:
            values = [str(record[part][key]) for record in records if record.get(part, {}).get(key) is not None]
            if values:
                rows.append((key, ", ".join(dict.fromkeys(values))))
    return rows


def rounded(value):
    """A score as the card shows it: 4 decimals (an accuracy's 0.7310000000000001 is 0.731)."""
    return round(value, 4) if isinstance(value, float) else value


def hub_datasets(clustering: dict | None, lineage: list[dict]) -> list[str] | None:
    """The Hub datasets the experts trained on, for the card's `datasets:` metadata: the clustering's and any grown
    expert's data, where it is a Hub id (a local folder names nothing others can find)."""
    names = [(clustering or {}).get("dataset"), *(entry.get("data") for entry in lineage)]
    found = [
        name
        for name in dict.fromkeys(names)
        if isinstance(name, str) and "/" in name and HUB_ID.fullmatch(name) and not os.path.exists(name)
    ]
    return found or None


def hub_metric(key: str) -> tuple[str, str]:
    """The Hub's metric id and a readable name for an evaluator's metric key, e.g. `top1`: accuracy, "top-1
    accuracy"; `text_to_image_R@5`: recall, "text-to-image recall@5". A key of no known form stands for itself."""
    for pattern, metric_type, name in HUB_METRICS:
        if match := re.fullmatch(pattern, key):
            return metric_type, name.format(*match.groups())
    return key, key


def eval_results(rows: list[dict], own: str) -> list[EvalResult]:
    """The model-index: the results the model gets as it is used, those of the rows of `own` model (`results_name`),
    with the Hub's metric ids. The other rows (the other routings, each expert alone) are baselines, in the card's
    table only."""
    return [
        EvalResult(
            task_type=row["task"],
            dataset_type=row["dataset"],
            dataset_name=row["dataset"],
            dataset_split=row["split"],
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=row["value"],
        )
        for row in rows
        if row["model"] == own
        for metric_type, metric_name in [hub_metric(row["metric"])]
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
    assembly = published_record(model_dir / "assembly.json", default={})
    clustering, training = assembly.get("clustering"), assembly.get("expert_training") or []
    results = published_record(model_dir / "eval_results.json", default=[])
    revision = model_revision(config)  # rows without one are of the MODE as it was when they were written
    results = [{"revision": revision} | row | {"value": rounded(row["value"])} for row in results]
    current = [row for row in results if row["revision"] == revision]
    recorded = {record["run"].get("base_model") for record in training} - {None}
    base_model = base_model or (recorded.pop() if len(recorded) == 1 else None)
    model_name, own_results = repo_id.split("/")[-1], results_name(config)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        license=license,
        base_model=base_model,
        tags=["clip", "mode", "mixture-of-data-experts", "zero-shot-image-classification", "custom_code"],
        model_name=model_name,
        datasets=hub_datasets(clustering, config.get("expert_lineage") or []),
        eval_results=eval_results(current, own_results) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_name=model_name,
        repo_id=repo_id,
        num_experts=config["num_experts"],
        num_fine_clusters=config["num_fine_clusters"],
        architecture=architecture(config),
        routing_text=ROUTING_TEXT[config["routing"]].format(**config),
        router_top_k=config.get("router_top_k"),
        router_embed_dim=MODE_CONFIGS[config["model_type"]].from_dict(config).router_embed_dim,
        router_encoder=router_encoder(config),
        clustering=clustering,
        expert_rows=expert_rows(config["fine_to_coarse"], clustering),
        training=training_rows(training),
        results=results,
        own_results=own_results,
        changelog=config.get("changelog") or [],
        lineage=config.get("expert_lineage") or [],
        revision=revision,
    )


def router_encoder(config: dict) -> str:
    """What embeds the task for routing, in the card's words: the seed's text tower, or a sentence encoder."""
    router = config["router_text_config"]
    if config.get("router_pooling", "projection") == "projection":
        return "the seed's text tower"
    name = router.get("_name_or_path") or router["model_type"]
    return f"the sentence encoder {name} ({config['router_pooling']} pooling)"
