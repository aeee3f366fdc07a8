"""MODE end to end, resumable: data, clustering, seed, experts, assembly, baselines, evaluation and report.

    python train/job.py --recipe offline-mix --output runs/offline-mix [--smoke]

runs on the offline corpus (real images that install without the Hub) and a seed trained from random weights. Online,
the same stages run on your pairs, from a pretrained CLIP, on GPUs:

    python train/job.py --recipe my-recipe.json --output runs/web \\
        --dataset ORG/PAIRS --init openai/clip-vit-base-patch32 \\
        --zeroshot-dataset cifar10=uoft-cs/cifar10:test --templates cifar10=cifar10 \\
        --retrieval-dataset ORG/CAPTIONED:test \\
        --launcher "accelerate launch --multi_gpu --num_processes 8"

Every stage runs the project's own scripts and is skipped when its output exists, so a re-run resumes. The report
is `OUTPUT/report.md`, with PNG plots beside it; each stage's log is under `OUTPUT/logs/`.
"""

import argparse
import shlex
import sys
from pathlib import Path

from modeling_mode.lib import cli
from modeling_mode.lib.errors import InputError
from modeling_mode.lib.job import RECIPES, Sources, StageError, held_out_set, run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="offline-mix", help=f"{', '.join(RECIPES)} or a JSON file of fields")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="the same stages on a few hundred pairs, in minutes")
    parser.add_argument("--encoder", help="caption encoder for clustering (default: all-MiniLM-L6-v2)")
    data = parser.add_argument_group("sources (default: the offline corpus and a seed from random weights)")
    data.add_argument("--dataset", help="image-caption pairs: Hub id, save_to_disk or data-file folder")
    data.add_argument("--split", default="train", help="split of --dataset to train on")
    data.add_argument("--image-column", default="image")
    data.add_argument("--caption-column", default="caption", help="a string or list-of-strings column")
    data.add_argument("--init", help="the seed's start: CLIPModel (Hub id or folder) or train/expert.py checkpoint")
    data.add_argument(
        "--zeroshot-dataset",
        action="append",
        default=[],
        metavar="TASK=DATASET[:SPLIT]",
        help="a class-labelled held-out set (split default: test); repeat for more",
    )
    for flag, what in (("--templates", "prompt templates"), ("--classnames", "class names")):
        data.add_argument(
            flag,
            action="append",
            default=[],
            metavar="TASK=FILE|SET",
            help=f"a zero-shot task's {what}: a JSON list, or a set named as in eval/zeroshot.py (e.g. imagenet1k)",
        )
    data.add_argument(
        "--retrieval-dataset", metavar="DATASET[:SPLIT]", help="held-out images with their captions (--caption-column)"
    )
    data.add_argument(
        "--launcher",
        default=shlex.join([sys.executable]),
        help='runs clustering and training, e.g. "accelerate launch --num_processes 8" (default: this python)',
    )
    return parser.parse_args(argv)


def per_task(values: list[str], flag: str, example: str) -> dict[str, str]:
    """Repeated TASK=VALUE flags as {task: value}."""
    named = {}
    for value in values:
        task, equals, rest = value.partition("=")
        if not (equals and task and rest):
            raise InputError(f"{flag} {value!r}: expected TASK={example}.")
        named[task] = rest
    return named


def sources_of(args: argparse.Namespace) -> Sources:
    zeroshot = per_task(args.zeroshot_dataset, "--zeroshot-dataset", "DATASET[:SPLIT], e.g. cifar10=uoft-cs/cifar10")
    return Sources(
        dataset=args.dataset,
        split=args.split,
        image_column=args.image_column,
        caption_column=args.caption_column,
        init=args.init,
        zeroshot={task: held_out_set(dataset) for task, dataset in zeroshot.items()},
        templates=per_task(args.templates, "--templates", "FILE|SET, e.g. cifar10=cifar10"),
        classnames=per_task(args.classnames, "--classnames", "FILE|SET, e.g. imagenet=imagenet1k"),
        retrieval=held_out_set(args.retrieval_dataset) if args.retrieval_dataset else None,
        launcher=tuple(shlex.split(args.launcher)),
    )


def main(argv=None):
    args = parse_args(argv)
    try:
        report = run(args.recipe, args.output, sources_of(args), smoke=args.smoke, encoder=args.encoder)
    except StageError as error:  # the stage's own error line is in the message; its exit status is kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.returncode)
    print(f"report: {report}")


if __name__ == "__main__":
    cli.run(main)
