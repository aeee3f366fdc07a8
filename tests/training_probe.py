"""Scripts that tests/test_training.py runs in fresh processes (some under `accelerate launch`).

python tests/training_probe.py gradients DATASET OUT.pt BATCH_SIZE ACCUMULATION
    One forward/backward of a tiny seed on step 0's global batch; saves the loss and every gradient.
python tests/training_probe.py killed EXPERT_FLAGS... --kill-at STEP
    train/expert.py's training, SIGKILLed right after the checkpoint of step STEP is complete.
"""

import os
import signal
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import HfArgumentParser

from modeling_mode.training import (
    ExpertTrainingArguments,
    TrainingData,
    accumulate_gradients,
    build_optimizer,
    random_clip,
    train,
)


def gradients(dataset: str, out: str, batch_size: int, accumulation: int) -> None:
    accelerator = Accelerator(cpu=True)
    set_seed(0)
    model, tokenizer, image_processor = random_clip("tiny")
    args = ExpertTrainingArguments(
        dataset=dataset,
        output=os.path.dirname(out),
        max_steps=1,
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        num_workers=0,
    )
    data = TrainingData(args, None, tokenizer, image_processor, model.config.text_config.max_position_embeddings)
    model, _ = accelerator.prepare(model, build_optimizer(model, args))
    batches = data.micro_batches(accelerator, start_step=0)
    loss = accumulate_gradients(model, [next(batches) for _ in range(accumulation)], accelerator)
    loss = accelerator.reduce(loss, "mean")
    if accelerator.is_main_process:  # gradients are already averaged over processes, as in training
        grads = {name: p.grad for name, p in accelerator.unwrap_model(model).named_parameters()}
        torch.save({"loss": loss, "grads": grads}, out)
    accelerator.wait_for_everyone()


def killed(argv: list[str]) -> None:
    kill_at = int(argv[argv.index("--kill-at") + 1])
    argv = argv[: argv.index("--kill-at")] + argv[argv.index("--kill-at") + 2 :]
    (args,) = HfArgumentParser(ExpertTrainingArguments).parse_args_into_dataclasses(argv)

    def kill(step, path):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(args, on_checkpoint=kill)


if __name__ == "__main__":
    if sys.argv[1] == "gradients":
        gradients(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        killed(sys.argv[2:])
