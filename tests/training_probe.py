"""Scripts that tests/test_training.py runs in fresh processes (some under `accelerate launch`).

python tests/training_probe.py gradients DATASET OUT_DIR [--family FAMILY] BATCH_SIZExACCUMULATION...
    For each BATCH_SIZExACCUMULATION (e.g. 4x1 2x2): one forward/backward of a tiny seed (a CLIP, or of --family) on
    step 0's global batch; saves the loss and every gradient to OUT_DIR/BATCH_SIZExACCUMULATION.pt.
python tests/training_probe.py killed-in-final-save EXPERT_FLAGS... --kill-after MOVES
    train/expert.py's training, SIGKILLed in its final save, right after MOVES files were moved into --output.
"""

import os
import signal
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from modeling_mode.families import family_of
from modeling_mode.lib.core import cli
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.batches import TrainingData
from modeling_mode.lib.training.loop import accumulate_gradients, train
from modeling_mode.lib.training.optimization import build_optimizer
from modeling_mode.lib.training.start import random_expert


def gradients(
    dataset: str, out_dir: str, batch_size: int, accumulation: int, accelerator: Accelerator, family: str = "clip"
) -> None:
    set_seed(0)
    model, processor = random_expert("tiny", family)
    args = ExpertTrainingArguments(
        dataset=dataset,
        output=out_dir,
        max_steps=1,
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        num_workers=0,
    )
    data = TrainingData(args, accelerator)
    max_length, family = model.config.text_config.max_position_embeddings, family_of(model.config)
    model, _ = accelerator.prepare(model, build_optimizer(model, args))
    batches = data.micro_batches(processor, max_length, start_step=0, family=family)
    loss = accumulate_gradients(model, [data.to_device(next(batches)) for _ in range(accumulation)], accelerator)
    loss = accelerator.reduce(loss, "mean")
    if accelerator.is_main_process:  # gradients are already averaged over processes, as in training
        grads = {name: p.grad for name, p in accelerator.unwrap_model(model).named_parameters()}
        torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"{batch_size}x{accumulation}.pt"))
    accelerator.wait_for_everyone()


def killed_in_final_save(argv: list[str]) -> None:
    """The fault hook: os.replace, which moves the final save's files from its scratch folder into --output, kills
    the process once it has moved `--kill-after` of them. Checkpoints and records are renamed elsewhere or in place."""
    at = argv.index("--kill-after")
    args = cli.parse(ExpertTrainingArguments, __doc__, argv[:at] + argv[at + 2 :])
    kill_after = int(argv[at + 1])
    output, replace, moved = os.path.abspath(args.output), os.replace, []

    def replace_then_kill(source, destination):
        replace(source, destination)
        into_output = os.path.dirname(os.path.abspath(destination)) == output
        if into_output and os.path.dirname(os.path.abspath(source)) != output:
            moved.append(destination)
            if len(moved) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_kill
    train(args)


if __name__ == "__main__":
    if sys.argv[1] == "gradients":
        accelerator = Accelerator(cpu=True)
        shapes, family = sys.argv[4:], "clip"
        if shapes[0] == "--family":
            family, shapes = shapes[1], shapes[2:]
        for shape in shapes:
            batch_size, accumulation = map(int, shape.split("x"))
            gradients(sys.argv[2], sys.argv[3], batch_size, accumulation, accelerator, family)
    elif sys.argv[1] == "killed-in-final-save":
        killed_in_final_save(sys.argv[2:])
