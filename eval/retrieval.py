"""Image-to-text and text-to-image retrieval (recall@1/5/10) of a CLIPModel or a ModeCLIPModel.

    python eval/retrieval.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test --output results.json

The dataset holds one image per row and its captions (a string or a list of strings). A row without a caption (an
empty string or list, or none) is refused, naming the row: an image no text describes has no right answer, so filter
such rows out first. A MODE is routed as in the paper: the whole caption set is the task for image-to-text, each
query caption its own task for text-to-image. Writes what eval/zeroshot.py writes: the results JSON, its table (.md),
`evaluate`'s record (.evaluate.json) and, for a local --model, its eval_results.json rows.
"""

from modeling_mode.lib import cli
from modeling_mode.lib.evaluation import RetrievalArguments, evaluate_retrieval


def main(argv: list[str] | None = None) -> None:
    print(evaluate_retrieval(cli.parse(RetrievalArguments, __doc__, argv)))


if __name__ == "__main__":
    cli.run(main)
