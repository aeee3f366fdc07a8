"""The command lines of the evaluators: eval/zeroshot.py (`mode-zeroshot`) and eval/retrieval.py
(`mode-retrieval`), each the evaluation (`run`) and its table printed, bad input ending with exit status 2."""

from ..core import cli
from .run import RetrievalArguments, ZeroShotArguments, evaluate_retrieval, evaluate_zero_shot

# The --help of eval/zeroshot.py (`mode-zeroshot`) and eval/retrieval.py (`mode-retrieval`).
ZERO_SHOT_DESCRIPTION = """\
Zero-shot image classification of a CLIPModel or a ModeCLIPModel on a `datasets` image-classification set.

    python eval/zeroshot.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test \\
        [--templates FILE.json|SET] [--classnames FILE.json|SET] --output results.json

`mode-zeroshot` takes the same flags.

SET names a benchmark's class names or prompt templates as clip-benchmark publishes them (e.g. `imagenet1k`: OpenAI's
80 ImageNet templates; `cifar10`, `food101`, ...), read from the `clip-benchmark` package's data files.

For a MODE, reports side by side the ensemble routed with the paper's formula, with the released code's, uniform, and
each expert alone, with the routing weights used. Writes the results as JSON, a markdown table beside it (.md) and
`evaluate`'s record of the metrics (.evaluate.json); a local --model's eval_results.json, which its model card shows,
gets the results too (--no-eval-results: not).
"""
RETRIEVAL_DESCRIPTION = """\
Image-to-text and text-to-image retrieval (recall@1/5/10) of a CLIPModel or a ModeCLIPModel.

    python eval/retrieval.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test --output results.json

`mode-retrieval` takes the same flags.

The dataset holds one image per row and its captions (a string or a list of strings). A row without a caption (an
empty string or list, or none) is refused, naming the row: an image no text describes has no right answer, so filter
such rows out first. A MODE is routed as in the paper: the whole caption set is the task for image-to-text, each
query caption its own task for text-to-image. Writes what eval/zeroshot.py writes: the results JSON, its table (.md),
`evaluate`'s record (.evaluate.json) and, for a local --model, its eval_results.json rows.
"""


def zero_shot_main(argv: list[str] | None = None) -> None:
    """eval/zeroshot.py: the evaluation, then its table."""
    print(evaluate_zero_shot(cli.parse(ZeroShotArguments, ZERO_SHOT_DESCRIPTION, argv)))


def retrieval_main(argv: list[str] | None = None) -> None:
    """eval/retrieval.py: the evaluation, then its table."""
    print(evaluate_retrieval(cli.parse(RetrievalArguments, RETRIEVAL_DESCRIPTION, argv)))


def zero_shot_command() -> None:
    """`mode-zeroshot`, eval/zeroshot.py: `zero_shot_main`, bad input ending with exit status 2 (`cli.run`)."""
    cli.run(zero_shot_main)


def retrieval_command() -> None:
    """`mode-retrieval`, eval/retrieval.py: `retrieval_main`, bad input ending with exit status 2 (`cli.run`)."""
    cli.run(retrieval_main)
