"""`train()`: one run of train/expert.py, from its start to its final save; its steps; one optimizer step on the
global batch, and the accumulation of its micro-batches' gradients."""

import math
import os
import time
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from tqdm.auto import tqdm

from ..errors import check_output_dir
from ..loss import contrastive_loss
from .arguments import ExpertTrainingArguments
from .batches import TrainingData
from .checkpoints import final_step, prune_checkpoints, save_checkpoint, save_final, write_record
from .optimization import build_optimizer, learning_rate_at
from .record import run_record, scalars
from .start import Start, load_start, resolve_start, restore

logger = get_logger(__name__)  # logs on the main process only
MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned temperature so that logits are scaled by at most 100


def train(args: ExpertTrainingArguments, on_checkpoint=None) -> str:
    """Train a seed or an expert; returns the output directory, a standalone CLIPModel directory with its processor.

    Every input is checked before the first step. `--resume` of a run already finished at this run's last step
    changes nothing. `on_checkpoint(step, path)` is called on every process after each checkpoint is complete.
    """
    check_output_dir(args.output)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=args.trackers(),
        project_config=ProjectConfiguration(project_dir=args.output, logging_dir=os.path.join(args.output, "logs")),
    )
    if args.resume and final_step(args.output) == args.last_step:
        logger.info(f"{args.output} holds this run, finished at step {args.last_step}: nothing to do.")
        return args.output
    start = resolve_start(args)
    set_seed(args.seed)
    model, processor = load_start(start)
    data = TrainingData(args, accelerator)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, optimizer = accelerator.prepare(model, build_optimizer(model, args))
    stream_position = restore(start, args, accelerator, optimizer)
    record = begin_run(args, start, accelerator, data)
    config = accelerator.unwrap_model(model).config

    def checkpoint(step: int) -> None:
        state = {"step": step, "max_steps": args.max_steps, "stream_positions": gather_object([data.stream_position])}
        path = save_checkpoint(accelerator, args.output, state, config, processor, record)
        if accelerator.is_main_process:
            prune_checkpoints(args.output, args.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint(step, path)

    batches = data.micro_batches(processor, config.text_config.max_position_embeddings, start.step, stream_position)
    run_steps(args, accelerator, model, optimizer, batches, start.step, data.global_batch_size, checkpoint)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record["run"]["final_step"] = args.last_step
        save_final(args.output, record, accelerator.unwrap_model(model), processor)
    logger.info(f"Saved the model and its CLIPProcessor to {args.output}, finished at step {args.last_step}.")
    accelerator.end_training()
    return args.output


def begin_run(args: ExpertTrainingArguments, start: Start, accelerator: Accelerator, data: TrainingData) -> dict:
    """Write the run's record (the first write into --output: it also clears the `final_step` of a run finished there
    before), hand it to the trackers, and say how the run starts. Returns the record."""
    record = run_record(args, start, accelerator, data)
    if accelerator.is_main_process:
        write_record(args.output, record)
    accelerator.init_trackers("mode-expert", config=scalars(record))
    logger.info(start.describe())
    logger.info(data.describe())
    logger.info(
        f"Global batch of {data.global_batch_size} pairs: --batch-size {args.batch_size} x "
        f"--gradient-accumulation-steps {args.gradient_accumulation_steps} x {accelerator.num_processes} "
        f"processes; steps {start.step} to {args.last_step} of a {args.max_steps}-step schedule."
    )
    return record


def run_steps(
    args: ExpertTrainingArguments,
    accelerator: Accelerator,
    model,
    optimizer,
    batches,
    step: int,
    global_batch_size: int,
    checkpoint,
):
    """From `step` to the run's last: the schedule's learning rate, an optimizer step on the global batch, the metrics
    every --log-every steps and `checkpoint(step)` every --checkpoint-every, each also at the last step."""
    # A `with`: the bar ends its line even when a step fails, so that an error is printed on a line of its own.
    bar = tqdm(total=args.last_step, initial=step, disable=not accelerator.is_main_process, unit="step", desc="train")
    with bar:
        window_start, window_steps = time.perf_counter(), 0
        model.train()
        while step < args.last_step:
            micro_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
            micro_batches = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro_batches]
            learning_rate = learning_rate_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            loss = train_step(model, micro_batches, optimizer, accelerator, args.max_grad_norm)
            step, window_steps = step + 1, window_steps + 1
            bar.update(1)
            if step % args.log_every == 0 or step == args.last_step:
                samples_per_second = global_batch_size * window_steps / (time.perf_counter() - window_start)
                log_metrics(accelerator, model, bar, step, loss, learning_rate, samples_per_second)
                window_start, window_steps = time.perf_counter(), 0
            if step % args.checkpoint_every == 0 or step == args.last_step:
                checkpoint(step)


def log_metrics(accelerator: Accelerator, model, bar, step: int, loss, learning_rate: float, samples_per_second):
    metrics = {
        "train/loss": accelerator.reduce(loss, "mean").item(),
        "train/learning_rate": learning_rate,
        "train/logit_scale": accelerator.unwrap_model(model).logit_scale.exp().item(),
        "train/samples_per_second": samples_per_second,
    }
    accelerator.log(metrics, step=step)
    bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", samples_s=f"{samples_per_second:.1f}")


def embed(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features. The wrapped model's forward is called, so that DDP sees the pass."""
    outputs = model(**batch)
    return outputs.image_embeds, outputs.text_embeds


def accumulate_gradients(model, micro_batches: list[dict], accelerator: Accelerator) -> torch.Tensor:
    """Backward of the contrastive loss of the global batch made of every process's `micro_batches`; returns it.

    With several micro-batches, their features are first computed without gradients; each micro-batch is then
    recomputed with gradients and contrasted against all the cached ones, so that the accumulated gradient is that
    of the whole batch (as open_clip's --accum-freq), at the cost of one extra forward.
    """
    logit_scale = accelerator.unwrap_model(model).logit_scale
    cached = None
    if len(micro_batches) > 1:
        with torch.no_grad():
            cached = [embed(model, batch) for batch in micro_batches]
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # Gradients are all-reduced once, in the last backward.
        with nullcontext() if last else accelerator.no_sync(model):
            image_embeds, text_embeds = embed(model, batch)
            if cached is not None:
                image_embeds = torch.cat([image_embeds if j == i else c[0] for j, c in enumerate(cached)])
                text_embeds = torch.cat([text_embeds if j == i else c[1] for j, c in enumerate(cached)])
            # The temperature is in every micro-batch's loss: let its gradient through once, not once per pass.
            loss = contrastive_loss(image_embeds, text_embeds, logit_scale if last else logit_scale.detach())
            accelerator.backward(loss)
    return loss.detach()


def train_step(model, micro_batches: list[dict], optimizer, accelerator: Accelerator, max_grad_norm: float = 0.0):
    """One optimizer step on the global batch; returns this process's share of its loss."""
    loss = accumulate_gradients(model, micro_batches, accelerator)
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        accelerator.unwrap_model(model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss
