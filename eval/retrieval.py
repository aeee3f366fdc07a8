"""Image-to-text and text-to-image retrieval (recall@1/5/10) of a CLIPModel or a ModeCLIPModel.

    python eval/retrieval.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test --output results.json

The dataset holds one image per row and its captions (a string or a list of strings). A row without a caption (an
empty string or list, or none) is refused, naming the row: an image no text describes has no right answer, so filter
such rows out first. A MODE is routed as in the paper: the whole caption set is the task for image-to-text, each
query caption its own task for text-to-image.
"""

from modeling_mode.lib.cli import run
from modeling_mode.lib.evaluation import (
    captions_per_image,
    check_flags,
    command_line,
    image_batches,
    load_model,
    load_split,
    retrieval,
    write_results,
)


def main(argv: list[str] | None = None) -> None:
    parser = command_line(__doc__.splitlines()[0])
    parser.add_argument("--caption-column", default="caption")
    args = parser.parse_args(argv)

    # Every input is checked before the model loads and the images are encoded.
    check_flags(args)
    dataset, image_column = load_split(args)
    captions = captions_per_image(dataset, args.caption_column)
    model, tokenizer, image_processor = load_model(args.model, args.device, args.trust_remote_code)

    images = image_batches(dataset, image_column, args.batch_size)
    results = retrieval(model, tokenizer, image_processor, images, captions)
    results.update(model=args.model, dataset=args.dataset, split=args.split)
    print(write_results(results, args.output))


if __name__ == "__main__":
    run(main)
