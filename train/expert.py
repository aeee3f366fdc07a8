"""Train a MODE seed or data expert (Ma et al., CVPR 2024, section 2) on one process, several, or several machines.

    accelerate launch train/expert.py --dataset runs/clusters/dataset --cluster all --config tiny \
        --max-steps 2000 --output runs/seed                        # or --init openai/clip-vit-base-patch32
    accelerate launch train/expert.py --dataset runs/clusters/dataset --cluster 2 \
        --init runs/seed/checkpoints/step_1500 --max-steps 2000 --output runs/expert-2

`--init` a seed checkpoint forks its weights, optimizer state and schedule position; `--resume` continues a killed
run. `python train/expert.py --help` lists every flag.
"""

import sys

from transformers import HfArgumentParser

from modeling_mode.errors import InputError
from modeling_mode.training import ExpertTrainingArguments, train


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ExpertTrainingArguments).parse_args_into_dataclasses(argv)
    try:
        train(args)
    except InputError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
