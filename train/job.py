"""MODE end to end, resumable: data, clustering, seed, experts, assembly, baselines, evaluation and report.

    python train/job.py --recipe offline-mix --output runs/offline-mix [--smoke]

runs on the offline corpus (real images that install without the Hub) and a seed trained from random weights. Online,
the same stages run on your pairs, from a pretrained CLIP, on GPUs:

    python train/job.py --recipe my-recipe.json --output runs/web \\
        --dataset ORG/PAIRS --init openai/clip-vit-base-patch32 \\
        --zeroshot-dataset cifar10=uoft-cs/cifar10:test food101=ethz/food101:validation \\
        --templates cifar10=cifar10 food101=food101 \\
        --retrieval-dataset ORG/CAPTIONED:test \\
        --launcher "accelerate launch --multi_gpu --num_processes 8"

Every stage runs the project's own scripts and is skipped when its output is complete, so a re-run resumes. The
report is `OUTPUT/report.md`, with PNG plots beside it; each stage's log is under `OUTPUT/logs/`.
"""

import sys

from modeling_mode.lib import cli
from modeling_mode.lib.job import JobArguments, StageError, run


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(JobArguments, __doc__, argv)
    try:
        report = run(args.recipe, args.output, args.sources(), smoke=args.smoke, encoder=args.encoder)
    except StageError as error:  # the stage's own error line is in the message; its exit status is kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.returncode)
    print(f"report: {report}")


if __name__ == "__main__":
    cli.run(main)
