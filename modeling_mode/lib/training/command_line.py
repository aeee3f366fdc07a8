"""The command line of a training run: train/expert.py, `mode-train-expert`, `python -m modeling_mode.lib.training`."""

import logging

from ..core import cli
from .arguments import ExpertTrainingArguments
from .loop import train

# The --help of train/expert.py, `mode-train-expert` and `python -m modeling_mode.lib.training`.
DESCRIPTION = """\
Train a MODE seed or data expert (Ma et al., CVPR 2024, section 2) on one process, several, or several machines.

    accelerate launch train/expert.py --dataset runs/clusters/dataset --cluster all --config tiny \\
        --max-steps 2000 --output runs/seed                        # or --init openai/clip-vit-base-patch32
    accelerate launch train/expert.py --dataset runs/clusters/dataset --cluster 2 \\
        --init runs/seed/checkpoints/step_1500 --max-steps 2000 --output runs/expert-2
    accelerate launch train/expert.py --dataset corpus/ --labels runs/clusters/labels --streaming \\
        --image-column jpg --caption-column txt --cluster 2 --init runs/seed --max-steps 2000 --output runs/expert-2

`mode-train-expert` and `python -m modeling_mode.lib.training` take the same flags.

`--labels` (a clustering's OUTPUT/labels) trains on the original pairs of --dataset, joined with their cluster ids on
the fly: no labelled copy of the corpus. Streamed, the data files (parquet or webdataset .tar) are read directly, and a
resumed run skips those it had trained on without reading them. Resharded shards (train/reshard.py) hold one cluster:
train on OUTPUT/cluster-K with --streaming --cluster all.
`--init` a seed checkpoint forks its weights, optimizer state and schedule position. `--resume` continues the run in
--output from its last checkpoint: a killed run, or one stopped by --stop-at-step that should go further; with no
checkpoint there, it starts the run; a run already finished at this run's last step is left as it is. The output is a
CLIPModel directory with its CLIPProcessor (`AutoProcessor.from_pretrained`); it is finished when its
training_args.json, written last, holds `run.final_step` (`training.outputs.is_finished`). Bad input ends
with one line on stderr and exit status 2. Flags have dash and underscore spellings, and transformers' names where
they mean the same (--output_dir, --per_device_train_batch_size, --save_steps, ...).
"""


def main(argv: list[str] | None = None) -> str:
    """train/expert.py: one training run, logging how it starts and where it is saved; returns its output folder."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S")
    logging.getLogger("modeling_mode").setLevel(logging.INFO)  # how the run starts, where it is saved
    return train(cli.parse(ExpertTrainingArguments, DESCRIPTION, argv))


def command() -> None:
    """The command line (`mode-train-expert`, `python -m modeling_mode.lib.training`, train/expert.py): `main`, bad
    input ending with exit status 2 (`cli.run`)."""
    cli.run(main)
