"""MODE end to end, resumable: data, clustering, seed, experts, assembly, baselines, evaluation and report.

    python train/job.py --recipe offline-mix --output runs/offline-mix [--smoke] [--seeds K]

runs on the offline corpus (real images that install without the Hub) and a seed trained from random weights. Online,
the same stages run on your pairs, from a pretrained CLIP, on GPUs:

    python train/job.py --recipe my-recipe.json --output runs/web \\
        --dataset ORG/PAIRS --init openai/clip-vit-base-patch32 \\
        --zeroshot-dataset cifar10=uoft-cs/cifar10:test food101=ethz/food101:validation \\
        --templates cifar10=cifar10 food101=food101 \\
        --retrieval-dataset ORG/CAPTIONED:test \\
        --launcher "accelerate launch --multi_gpu --num_processes 8"

Clustering, training and assembly run the project's own scripts (evaluation runs in this process); every stage is
skipped when its output is complete, so a re-run resumes. The data are built once in `OUTPUT/data/`; each training
seed s (K of them: --seeds) runs the whole comparison in `OUTPUT/seed-<s>/`, its stages' logs in
`OUTPUT/seed-<s>/logs/`. The report is `OUTPUT/report.md`, with PNG plots beside it.
"""

import sys

from modeling_mode.lib import cli
from modeling_mode.lib.job import JobArguments, StageError, run


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(JobArguments, __doc__, argv)
    try:
        report = run(
            args.recipe, args.output, args.sources(), smoke=args.smoke, encoder=args.encoder, seeds=args.seeds
        )
    except StageError as error:  # the stage's own error line is in the message; its exit status is kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.returncode)
    print(f"report: {report}")


if __name__ == "__main__":
    cli.run(main)
