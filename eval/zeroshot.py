"""Zero-shot image classification of a CLIPModel or a ModeCLIPModel on a `datasets` image-classification set.

    python eval/zeroshot.py --model runs/mode-clip --dataset PATH_OR_HUB_ID --split test \
        [--templates FILE.json|SET] [--classnames FILE.json|SET] --output results.json

SET names a benchmark's class names or prompt templates as clip-benchmark publishes them (e.g. `imagenet1k`: OpenAI's
80 ImageNet templates; `cifar10`, `food101`, ...), read from the `clip-benchmark` package's data files.

For a MODE, reports side by side the ensemble routed with the paper's formula, with the released code's, uniform, and
each expert alone, with the routing weights used. Writes the results as JSON and a markdown table beside it (.md).
"""

import datasets

from modeling_mode.lib.cli import run
from modeling_mode.lib.evaluation import (
    TEMPLATES,
    check_flags,
    class_labels,
    column_of_type,
    command_line,
    image_batches,
    load_model,
    load_split,
    prompt_templates,
    strings_from,
    write_results,
    zero_shot_classification,
)


def main(argv: list[str] | None = None) -> None:
    parser = command_line(__doc__.splitlines()[0])
    parser.add_argument("--label-column", help="default: the dataset's class-label column")
    parser.add_argument("--classnames", help="JSON list of class names by label id, or a SET (default: the labels')")
    parser.add_argument("--templates", help="JSON list of prompt templates with {c} for the class name, or a SET")
    args = parser.parse_args(argv)

    # Every input is checked before the model loads and the images are encoded.
    check_flags(args)
    templates = prompt_templates(strings_from(args.templates, TEMPLATES) if args.templates else None)
    classnames = strings_from(args.classnames, "classnames") if args.classnames else None
    dataset, image_column = load_split(args)
    label_column = args.label_column or column_of_type(dataset, datasets.ClassLabel, "--label-column")
    labels, classnames = class_labels(dataset, label_column, classnames)
    model, tokenizer, image_processor = load_model(args.model, args.device, args.trust_remote_code)

    images = image_batches(dataset, image_column, args.batch_size)
    results = zero_shot_classification(model, tokenizer, image_processor, images, labels, classnames, templates)
    results.update(model=args.model, dataset=args.dataset, split=args.split)
    print(write_results(results, args.output))


if __name__ == "__main__":
    run(main)
