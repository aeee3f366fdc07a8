"""The evaluators' runs: every input checked before the model loads (`inputs`), the model scored (`scoring`), the
results written: their JSON last, a markdown table and `evaluate`'s record beside it, and a local model's
eval_results.json rows, which its model card shows. `eval/zeroshot.py` and `eval/retrieval.py` are thin entry points
to `evaluate_zero_shot` and `evaluate_retrieval` (`command_line`)."""

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from ..core.files import read_json, write_json, write_text
from .inputs import (
    EvaluationArguments,
    RetrievalArguments,
    ZeroShotArguments,
    image_batches,
    load_model,
    retrieval_inputs,
    zero_shot_inputs,
)
from .outputs import evaluate_record, model_revision
from .scoring import retrieval, zero_shot_classification


def evaluate_zero_shot(arguments: ZeroShotArguments) -> str:
    """eval/zeroshot.py: check every input before the model loads, score the model, write the results; the table."""
    dataset, image_column, labels, classnames, templates = zero_shot_inputs(arguments)
    model, tokenizer, image_processor = load_model(arguments.model, arguments.device, arguments.trust_remote_code)

    images = image_batches(dataset, image_column, arguments.batch_size)
    results = zero_shot_classification(model, tokenizer, image_processor, images, labels, classnames, templates)
    return write_results(results, arguments)


def evaluate_retrieval(arguments: RetrievalArguments) -> str:
    """eval/retrieval.py: check every input before the model loads, score the model, write the results; the table."""
    dataset, image_column, captions = retrieval_inputs(arguments)
    model, tokenizer, image_processor = load_model(arguments.model, arguments.device, arguments.trust_remote_code)

    images = image_batches(dataset, image_column, arguments.batch_size)
    results = retrieval(model, tokenizer, image_processor, images, captions)
    return write_results(results, arguments)


def markdown_table(results: dict) -> str:
    """The results of one evaluation as a markdown table, one row per ensemble or expert."""
    metrics = list(next(iter(results["results"].values())))
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in results["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * values[m]:.2f}" for m in metrics) + " |")
    return "\n".join(lines)


def write_results(results: dict, arguments: EvaluationArguments) -> str:
    """Write the results of `arguments`' evaluation; return their markdown table.

    Beside the table (.md) go `evaluate`'s record of the metric values (.evaluate.json, with the time, the git commit
    and the versions) and, for a local model, its eval_results.json rows. The results JSON, which the main job and
    report read, is written last: its presence means everything else is complete.
    """
    results = {**results, "model": arguments.model, "dataset": arguments.dataset, "split": arguments.split}
    output = Path(arguments.output)
    table = markdown_table(results)
    write_text(output.with_suffix(".md"), table + "\n")
    write_json(evaluate_record(output), metric_record(results))
    if arguments.model_results is not None:
        config = Path(arguments.model) / "config.json"
        revision = model_revision(read_json(config) if config.is_file() else {})
        add_to_eval_results(arguments.model_results, [row | {"revision": revision} for row in card_rows(results)])
    write_json(output, results)
    return table


def metric_record(results: dict) -> dict:
    """The metric values with their provenance, in `evaluate.save`'s format (time, versions, commit), except that the
    commit is this package's, found without git's complaints: `evaluate.save` runs git in the current directory,
    which outside a checkout prints an error into every log, and without git fails after the metrics are computed."""
    import evaluate

    record = {key: results[key] for key in ("task", "model", "dataset", "split", "results")}
    return record | {
        "_timestamp": datetime.now().isoformat(),
        "_git_commit_hash": package_commit(),
        "_evaluate_version": evaluate.__version__,
        "_python_version": sys.version,
        "_interpreter_path": sys.executable,
    }


def package_commit() -> str | None:
    """The git commit of this package's checkout, or None (an installed wheel, or no git on the machine)."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def card_rows(results: dict) -> list[dict]:
    """The results as `eval_results.json` rows, which the model card turns into its table and model-index.

    A local data set is named by its absolute path, so that it is one data set however it was given; the card names
    it by its last path component.
    """
    dataset = os.path.abspath(results["dataset"]) if os.path.exists(results["dataset"]) else results["dataset"]
    evaluation = {"task": results["task"], "dataset": dataset, "split": results["split"]}
    return [
        evaluation | {"metric": metric, "model": name, "value": value}
        for name, values in results["results"].items()
        for metric, value in values.items()
    ]


def add_to_eval_results(path: Path, rows: list[dict]) -> None:
    """Add one evaluation's `rows` to the eval_results.json at `path`, in place of those of an earlier evaluation of
    the same task on the same data set and split: evaluating again updates the model card, never duplicates it."""
    from filelock import FileLock

    def evaluation(row):
        return row["task"], row["dataset"], row["split"]

    replaced = {evaluation(row) for row in rows}
    with FileLock(path.with_name(f".{path.name}.lock")):  # another evaluator of this model may be adding its rows
        earlier = read_json(path) if path.is_file() else []
        write_json(path, [row for row in earlier if evaluation(row) not in replaced] + rows)
