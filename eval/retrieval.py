"""Image-to-text and text-to-image retrieval (recall@1/5/10) of a CLIPModel or a ModeCLIPModel.

    python eval/retrieval.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test --output results.json

The dataset holds one image per row and its captions (a string or a list of strings). A MODE is routed as in the
paper: the whole caption set is the task for image-to-text, each query caption its own task for text-to-image.
"""

import argparse

import datasets

from modeling_mode.data import load_pairs
from modeling_mode.evaluation import column_of_type, image_batches, load_model, retrieval, write_results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="CLIPModel or ModeCLIPModel: local directory or Hub id")
    parser.add_argument("--dataset", required=True, help="save_to_disk or data-file directory, or Hub id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-column", help="default: the dataset's image column")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="evaluate on the first N images only")
    parser.add_argument("--device", help="e.g. cuda; default: cpu")
    parser.add_argument("--output", required=True, help="results JSON; the markdown table goes beside it (.md)")
    args = parser.parse_args()

    dataset = load_pairs(args.dataset, args.split)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    if args.caption_column not in dataset.column_names:
        raise ValueError(f"the dataset has no column {args.caption_column!r}: it has {dataset.column_names}.")
    image_column = args.image_column or column_of_type(dataset, datasets.Image, "--image-column")
    captions = [[c] if isinstance(c, str) else list(c) for c in dataset[args.caption_column]]

    model, tokenizer, image_processor = load_model(args.model, args.device)
    images = image_batches(dataset, image_column, args.batch_size)
    results = retrieval(model, tokenizer, image_processor, images, captions)
    results.update(model=args.model, dataset=args.dataset, split=args.split)
    print(write_results(results, args.output))


if __name__ == "__main__":
    main()
