"""Zero-shot classification accuracy as CLIP reports it: top-1, top-5, and the mean of the per-class accuracies."""

import datasets
import evaluate
import numpy as np

_INPUTS = """
Args:
    predictions (`list` of `list` of `int`): each example's class ids, best first: its `max(top_k)` best, or every
        class when there are fewer (`torch.topk(logits, min(5, num_classes)).indices`).
    references (`list` of `int`): each example's true class id.
    top_k (`tuple` of `int`, defaults to `(1, 5)`): the k of each top-k accuracy.
Returns:
    `top{k}` for each k: the share of examples whose true class is among their k best.
    `mean_per_class`: the top-1 accuracy of each class present in `references`, averaged (CLIP's metric for data
        sets whose classes are unbalanced, e.g. Pets, Flowers, Aircraft). A class that is only predicted does not
        count: its accuracy is undefined, not zero.
Examples:
    >>> metric = evaluate.load("modeling_mode/lib/evaluation/metrics/zero_shot_accuracy")
    >>> metric.compute(predictions=[[0, 1], [2, 0], [1, 0]], references=[0, 0, 1], top_k=(1, 2))
    {'top1': 0.6666666666666666, 'top2': 1.0, 'mean_per_class': 0.75}
"""

# Each example's ranked class ids, and its true class id.
_FEATURES = datasets.Features(
    {"predictions": datasets.List(datasets.Value("int64")), "references": datasets.Value("int64")}
)


class ZeroShotAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_INPUTS, features=_FEATURES)

    def _compute(self, predictions, references, top_k=(1, 5)):
        labels = np.asarray(references)
        hits = np.asarray(predictions) == labels[:, None]  # [examples, ranks]: where the true class was ranked
        accuracy = {f"top{k}": hits[:, :k].any(axis=1).mean().item() for k in top_k}
        per_class = [hits[labels == label, 0].mean() for label in np.unique(labels)]
        return accuracy | {"mean_per_class": np.mean(per_class).item()}
