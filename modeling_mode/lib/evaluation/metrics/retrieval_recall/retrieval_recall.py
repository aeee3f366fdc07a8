"""Retrieval recall@k: the share of queries with a relevant item among the k best retrieved."""

import datasets
import evaluate
import numpy as np

_INPUTS = """
Args:
    predictions (`list` of `list` of `int`): each query's item ids, best first: its `max(k)` best, or every item
        when there are fewer.
    references (`list` of `list` of `int`): each query's relevant item ids (e.g. for image-to-text retrieval, the
        ids of the image's captions; for text-to-image, the caption's image).
    k (`tuple` of `int`, defaults to `(1, 5, 10)`): the k of each recall@k.
Returns:
    `R@{k}` for each k: the share of queries with at least one relevant item among their k best.
Examples:
    >>> metric = evaluate.load("modeling_mode/lib/evaluation/metrics/retrieval_recall")
    >>> metric.compute(predictions=[[0, 2, 1], [1, 0, 2]], references=[[2], [0, 2]], k=(1, 2))
    {'R@1': 0.0, 'R@2': 1.0}
"""

# Each query's ranked item ids, and its relevant item ids.
_ITEMS = datasets.List(datasets.Value("int64"))
_FEATURES = datasets.Features({"predictions": _ITEMS, "references": _ITEMS})


class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation="", inputs_description=_INPUTS, features=_FEATURES)

    def _compute(self, predictions, references, k=(1, 5, 10)):
        # [queries, ranks]: where a relevant item was ranked (a query's relevant items vary in number)
        hits = np.array([np.isin(ranked, relevant) for ranked, relevant in zip(predictions, references)])
        return {f"R@{n}": hits[:, :n].any(axis=1).mean().item() for n in k}
