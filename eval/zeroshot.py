"""Zero-shot image classification of a CLIPModel or a ModeCLIPModel on a `datasets` image-classification set.

    python eval/zeroshot.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test \\
        [--templates FILE.json|SET] [--classnames FILE.json|SET] --output results.json

SET names a benchmark's class names or prompt templates as clip-benchmark publishes them (e.g. `imagenet1k`: OpenAI's
80 ImageNet templates; `cifar10`, `food101`, ...), read from the `clip-benchmark` package's data files.

For a MODE, reports side by side the ensemble routed with the paper's formula, with the released code's, uniform, and
each expert alone, with the routing weights used. Writes the results as JSON, a markdown table beside it (.md) and
`evaluate`'s record of the metrics (.evaluate.json); a local --model's eval_results.json, which its model card shows,
gets the results too (--no-eval-results: not).
"""

from modeling_mode.lib import cli
from modeling_mode.lib.evaluation import ZeroShotArguments, evaluate_zero_shot


def main(argv: list[str] | None = None) -> None:
    print(evaluate_zero_shot(cli.parse(ZeroShotArguments, __doc__, argv)))


if __name__ == "__main__":
    cli.run(main)
