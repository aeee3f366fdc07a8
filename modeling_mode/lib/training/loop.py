"""`train()`: one run of train/expert.py, from its start to its final save; its steps, and how fast they go; one
optimizer step on the global batch, and the accumulation of its micro-batches' gradients."""

import functools
import math
import os
import time
from contextlib import contextmanager, nullcontext

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from torch.utils.flop_counter import FlopCounterMode

from ...families import family_of
from ..core.checks import check_output_dir
from ..core.status import ProgressBar
from . import lora
from .arguments import ExpertTrainingArguments
from .batches import TrainingData
from .checkpoints import prune_checkpoints, save_checkpoint, save_final
from .loss import family_loss
from .optimization import build_optimizer, learning_rate_at
from .outputs import final_step, write_record
from .record import run_record, scalars
from .start import Start, load_start, resolve_start, restore

logger = get_logger(__name__)  # logs on the main process only
# CLIP clips the learned temperature so that logits are scaled by at most 100. SigLIP's is not clipped: big_vision does
# not, its learned bias balancing the scaled logits (the paper starts it at t' = log 10, b = -10).
MAX_LOGIT_SCALE = math.log(100)
MATMUL_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the peak's precision; float32 otherwise


def train(args: ExpertTrainingArguments, on_checkpoint=None) -> str:
    """Train a seed or an expert; returns the output directory, a standalone model directory (CLIP, MetaCLIP 2,
    SigLIP or SigLIP 2) with its processor.

    Every input is checked before the first step. `--resume` of a run already finished at this run's last step
    changes nothing. `on_checkpoint(step, path)` is called on every process after each checkpoint is complete.
    """
    check_output_dir(args.output, dataset=args.dataset, kind="a training run")
    args.check_schedule()
    # --torch-compile: Accelerate compiles the model last in `prepare` (around DDP, whose graph TorchDynamo then splits
    # at the gradient buckets); its checkpoints hold the model's own parameter names. Without it, `accelerate
    # config`'s dynamo settings apply, as Accelerate's default.
    compile_backend = {"dynamo_backend": args.torch_compile_backend} if args.torch_compile else {}
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=args.trackers(),
        project_config=ProjectConfiguration(project_dir=args.output, logging_dir=os.path.join(args.output, "logs")),
        **compile_backend,
    )
    if args.resume and final_step(args.output) == args.last_step:
        logger.info(f"{args.output} holds this run, finished at step {args.last_step}: nothing to do.")
        return args.output
    start = resolve_start(args)
    set_seed(args.seed)
    model, processor = load_start(start)
    data = TrainingData(args, accelerator)
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model = lora.adapt(model, args)  # --lora-rank: its checks are made here, before the first write
    model, optimizer = accelerator.prepare(model, build_optimizer(model, args, accelerator.device))
    stream_position = restore(start, args, accelerator, optimizer)
    peak = peak_flops(args, accelerator)
    record = begin_run(args, start, accelerator, data, step_setup(accelerator, model, optimizer, peak))
    config = accelerator.unwrap_model(model).config

    def checkpoint(step: int) -> None:
        state = {"step": step, "max_steps": args.max_steps, "stream_positions": gather_object([data.stream_position])}
        path = save_checkpoint(accelerator, args.output, state, config, processor, record)
        if accelerator.is_main_process:
            prune_checkpoints(args.output, args.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint(step, path)

    max_length = config.text_config.max_position_embeddings
    batches = data.micro_batches(processor, max_length, start.step, stream_position, family_of(config))
    run_steps(args, accelerator, model, optimizer, data, batches, start.step, peak, checkpoint)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record["run"]["final_step"] = args.last_step
        final = accelerator.unwrap_model(model, keep_torch_compile=False)
        save_final(args.output, record, lora.final_model(final, args, args.output), processor)
    saved = f"the model and its {type(processor).__name__}"  # the family's: CLIPProcessor, SiglipProcessor, ...
    logger.info(f"Saved {saved} to {args.output}, finished at step {args.last_step}.")
    accelerator.end_training()
    return args.output


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in the backward pass instead of keeping them. transformers renamed
    `gradient_checkpointing_enable` to `activation_checkpointing_enable` within v5 (the old name warns, and goes in
    v6); the floor, 5.3, knows only the old one."""
    options = {"use_reentrant": False}  # the non-reentrant variant works with frozen inputs and torch.compile
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def begin_run(
    args: ExpertTrainingArguments, start: Start, accelerator: Accelerator, data: TrainingData, step_setup: dict
) -> dict:
    """Write the run's record (the first write into --output: it also clears the `final_step` of a run finished there
    before), hand it to the trackers, and say how the run starts. Returns the record."""
    record = run_record(args, start, accelerator, data, step_setup)
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
    data: TrainingData,
    batches,
    step: int,
    peak_flops: float,
    checkpoint,
):
    """From `step` to the run's last: the schedule's learning rate, an optimizer step on the global batch of
    `batches` (moved to the device by `data.to_device`), the metrics every --log-every steps (MFU as a share of
    `peak_flops`) and `checkpoint(step)` every --checkpoint-every, each also at the last step."""
    meter = StepMeter(accelerator.unwrap_model(model, keep_torch_compile=False), data.global_batch_size, peak_flops)
    # A `with`: the bar ends its line even when a step fails, so that an error is printed on a line of its own.
    bar = ProgressBar(
        total=args.last_step, initial=step, disable=not accelerator.is_main_process, unit="step", desc="train"
    )
    with bar:
        model.train()
        while step < args.last_step:
            with meter.waiting_for_data():
                micro_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
            micro_batches = [data.to_device(batch) for batch in micro_batches]
            learning_rate = learning_rate_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            with meter.step(micro_batches):
                loss = train_step(model, micro_batches, optimizer, accelerator, args.max_grad_norm)
            step += 1
            bar.update(1)
            if step % args.log_every == 0 or step == args.last_step:
                log_metrics(accelerator, model, bar, step, loss, learning_rate, meter)
            if step % args.checkpoint_every == 0 or step == args.last_step:
                checkpoint(step)


def log_metrics(accelerator: Accelerator, model, bar, step: int, loss, learning_rate: float, meter: "StepMeter"):
    loss = accelerator.reduce(loss, "mean").item()  # waits for the device: the interval ends when its steps did
    speed = meter.interval()
    unwrapped = accelerator.unwrap_model(model)
    metrics = {
        "train/loss": loss,
        "train/learning_rate": learning_rate,
        "train/logit_scale": unwrapped.logit_scale.exp().item(),
        **{f"train/{name}": value for name, value in speed.items()},
    }
    if family_of(unwrapped.config).has_logit_bias:
        metrics["train/logit_bias"] = unwrapped.logit_bias.item()
    accelerator.log(metrics, step=step)
    bar.set_postfix(
        loss=f"{loss:.4f}",
        samples_s=f"{speed['samples_per_second']:.1f}",
        tflops=f"{speed['tflops_per_device']:.3g}",
        mfu=f"{speed['mfu']:.1%}",
        data_wait=f"{speed['data_wait_share']:.0%}",
    )


class StepMeter:
    """How fast the steps since the last log went: samples/s; the FLOP/s achieved on this process's device and their
    share of its peak (MFU); the share of the time spent waiting for the loader's micro-batches (a run bound by its
    loader waits much of the time; one bound by its steps, almost never. Timed on the host: on an accelerator, work
    still queued there overlaps the start of a wait). `model`: the CLIPModel trained, unwrapped."""

    def __init__(self, model, samples_per_step: int, peak_flops: float):
        self.model = model
        self.samples_per_step = samples_per_step
        self.peak_flops = peak_flops
        self.step_flops = None  # this process's FLOPs per step, counted on its first
        self.restart()

    def restart(self) -> None:
        self.start, self.steps, self.data_wait = time.perf_counter(), 0, 0.0

    @contextmanager
    def waiting_for_data(self):
        start = time.perf_counter()
        yield
        self.data_wait += time.perf_counter() - start

    @contextmanager
    def step(self, micro_batches: list[dict]):
        """One optimizer step on `micro_batches`; the first one's FLOPs are counted (`step_flops`)."""
        if self.step_flops is None:
            self.step_flops = step_flops(self.model, micro_batches)
        yield
        self.steps += 1

    def interval(self) -> dict[str, float]:
        """The figures of the interval since the last call, once the device has finished its steps; starts the next."""
        seconds = time.perf_counter() - self.start
        flops = self.step_flops * self.steps / seconds
        figures = {
            "samples_per_second": self.samples_per_step * self.steps / seconds,
            "tflops_per_device": flops / 1e12,
            "mfu": flops / self.peak_flops,
            "data_wait_share": self.data_wait / seconds,
        }
        self.restart()
        return figures


def step_flops(model, micro_batches: list[dict]) -> int:
    """The FLOPs of an optimizer step of `model` on `micro_batches` (this process's), counted by torch's
    FlopCounterMode on a copy of the model on the meta device: no memory, no computation, and the run's model (its DDP
    wrapper, its compiled code) untouched. That is each micro-batch's forward and backward, and with several, the
    forward that caches their features. Not counted: the loss (b x B x d products, next to nothing) and the activations
    --gradient-checkpointing recomputes (MFU counts the model's FLOPs, not the hardware's). The attention masks are
    left out: transformers reads their values to pick a kernel, which meta tensors do not have, and FLOPs do not depend
    on them. SigLIP 2's `spatial_shapes` stay real tensors on the CPU: their values set the shapes of its position
    embeddings' resize."""
    with torch.device("meta"):
        meta_model = lora.meta_copy(model)  # with LoRA adapters, whose frozen weights get no gradient
    batch = {name: torch.empty_like(x, device="meta") for name, x in micro_batches[0].items()}
    batch.pop("attention_mask", None)
    batch.pop("pixel_attention_mask", None)
    if "spatial_shapes" in batch:
        batch["spatial_shapes"] = micro_batches[0]["spatial_shapes"].cpu()
    with FlopCounterMode(display=False) as forward_and_backward:
        image_embeds, text_embeds = embed(meta_model, batch)
        (image_embeds.sum() + text_embeds.sum()).backward()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        embed(meta_model, batch)
    passes = len(micro_batches)
    cached = passes * forward.get_total_flops() if passes > 1 else 0
    return passes * forward_and_backward.get_total_flops() + cached


def step_setup(accelerator: Accelerator, model, optimizer, peak_flops: float) -> dict:
    """How the steps run, for the run's record: attention and AdamW kernels, torch.compile's backend (or "no"), the
    peak the logged MFU is a share of, and the number of parameters trained (all, or a LoRA run's adapters)."""
    return {
        "attention": accelerator.unwrap_model(model).config._attn_implementation,
        "adamw": "fused" if optimizer.defaults["fused"] else "default",
        "torch_compile": accelerator.state.dynamo_plugin.backend.value.lower(),
        "matmul_peak_tflops": peak_flops / 1e12,
        "trained_parameters": sum(p.numel() for group in optimizer.param_groups for p in group["params"]),
    }


def peak_flops(args: ExpertTrainingArguments, accelerator: Accelerator) -> float:
    """The FLOP/s the logged MFU is a share of: --peak-tflops, or a large matmul timed in the run's precision."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    return matmul_peak_flops(accelerator.device, MATMUL_DTYPES.get(accelerator.mixed_precision, torch.float32))


@functools.cache  # once per process and device
def matmul_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of the fastest of a few square matrix multiplies in `dtype` on `device`. 8192 x 8192 on an accelerator,
    where smaller ones fall short of its peak (2048: half an H100's); 2048 on a CPU, where larger ones take seconds."""
    size = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up: the library's first call initialises it
    seconds = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / seconds


def timed(work, device: torch.device) -> float:
    """Seconds `work()` takes on `device`, the accelerator's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an accelerator; CPU work is done when its call returns."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def embed(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features. The wrapped model's forward is called, so that DDP sees the pass."""
    outputs = model(**batch)
    return outputs.image_embeds, outputs.text_embeds


def accumulate_gradients(model, micro_batches: list[dict], accelerator: Accelerator) -> torch.Tensor:
    """Backward of the family's loss of the global batch made of every process's `micro_batches`; returns it.

    With several micro-batches, their features are first computed without gradients; each micro-batch is then
    recomputed with gradients and contrasted against all the cached ones, so that the accumulated gradient is that
    of the whole batch (as open_clip's --accum-freq), at the cost of one extra forward.
    """
    unwrapped = accelerator.unwrap_model(model)
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
            # The temperature (and SigLIP's bias) is in every micro-batch's loss: let its gradient through once, not
            # once per pass.
            loss = family_loss(unwrapped, image_embeds, text_embeds, learn_scalars=last)
            accelerator.backward(loss)
    return loss.detach()


def train_step(model, micro_batches: list[dict], optimizer, accelerator: Accelerator, max_grad_norm: float = 0.0):
    """One optimizer step on the global batch; returns this process's share of its loss."""
    loss = accumulate_gradients(model, micro_batches, accelerator)
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    unwrapped = accelerator.unwrap_model(model)
    if family_of(unwrapped.config).loss == "softmax":
        with torch.no_grad():
            unwrapped.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss
