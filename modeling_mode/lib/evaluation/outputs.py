"""What an evaluation's outputs are named by, as their readers (the model card, the main job's report) take them: the
names of the results' rows (each routing of a MODE, each expert alone, a CLIPModel), the revision of a MODE the rows
measured, and where the metric record of a results JSON goes."""

from pathlib import Path

from ...configuration_mode_clip import MODE_CONFIGS

# The names the results go by: each routing of a MODE, each of its experts alone, or a CLIPModel itself.
MODE_NAME, EXPERT_NAME, CLIP_NAME = "MODE {routing}", "expert {k}", "CLIPModel"


def evaluate_record(output: Path) -> Path:
    """Where the metric record of the results JSON `output` goes (`write_evaluate_record`)."""
    return output.with_suffix(".evaluate.json")


def model_revision(config: dict) -> int:
    """Which version of a MODE this is: 0 as assembled, then one more per change of its experts (its changelog's
    length: `growth`). Evaluation rows record it, so that a changed MODE's card tells its results from its parent's."""
    return len(config.get("changelog") or [])


def results_name(config: dict) -> str:
    """The name of a model's own results among those the evaluators report: a MODE as its config routes it, or a
    CLIPModel itself (the other rows are baselines: the other routings and each expert alone)."""
    return MODE_NAME.format(routing=config["routing"]) if config.get("model_type") in MODE_CONFIGS else CLIP_NAME
