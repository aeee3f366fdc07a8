"""Training MODE's CLIP data experts with Accelerate (Ma et al., CVPR 2024, section 2).

A seed CLIP trains on every pair (`--cluster all`). Each expert forks from a seed checkpoint, taking its weights,
optimizer state and schedule position, and continues on one coarse cluster's pairs: independent jobs that may run
anywhere, on any number of processes. `modeling_mode.lib.assembly` then joins them into one `ModeCLIPModel`.

- `arguments`: `ExpertTrainingArguments`, the flags of train/expert.py;
- `start`: where a run starts, what it loads from there;
- `batches`: `TrainingData`, what a run trains on and this process's micro-batches;
- `optimization`: AdamW's parameter groups and the learning-rate schedule;
- `loop`: `train()`, its steps and their speed (samples/s, MFU, loader wait), the gradient accumulation;
- `checkpoints`: checkpoints and the final save;
- `record`: training_args.json, the run's record, and when a run is finished (`is_finished`);
- `command_line`: `main`, train/expert.py's (and `python -m modeling_mode.lib.training`'s).

Import this package explicitly (`import modeling_mode.lib.training`): it needs accelerate and datasets, which the
Hub remote-code model does not.
"""

from .arguments import ExpertTrainingArguments
from .batches import TrainingData
from .checkpoints import CHECKPOINTS, TRAINER_STATE, latest_checkpoint, list_checkpoints
from .command_line import main
from .loop import accumulate_gradients, train, train_step
from .optimization import build_optimizer, learning_rate_at
from .record import TRAINING_ARGS, final_step, is_finished
from .start import random_clip

__all__ = [
    "CHECKPOINTS",
    "TRAINER_STATE",
    "TRAINING_ARGS",
    "ExpertTrainingArguments",
    "TrainingData",
    "accumulate_gradients",
    "build_optimizer",
    "final_step",
    "is_finished",
    "latest_checkpoint",
    "learning_rate_at",
    "list_checkpoints",
    "main",
    "random_clip",
    "train",
    "train_step",
]
