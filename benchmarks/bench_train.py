"""Training throughput of one MODE expert step against open_clip's, and the FLOP/s it achieves.

Both sides train the same OpenAI ViT-B/32 CLIP (quick-GELU, 77-token text) from random weights on the same synthetic
batch, at the same precision, in one process on this machine's CPU or GPU. Ours is `lib.training.loop.train_step`
(transformers' CLIPModel under Accelerate: contrastive loss, backward, AdamW, temperature clamp); open_clip's is the
body of its `train_one_epoch` (its model, `ClipLoss`, AdamW with its weight-decay groups, clamp). Steps alternate
between the two (each going first every other round) so that load from other programs hits both alike; medians are
reported. The FLOPs of a step are counted by torch's FlopCounterMode on an eager step; the peak is a large matrix
multiply timed in the same run, as train/expert.py times it for its logged MFU.

`--compile` compiles both models with torch.compile's inductor: ours as `train/expert.py --torch-compile` does
(Accelerate's dynamo backend), open_clip's as its `--torchcompile` does (`torch.compile(model)`). One untimed step per
side then compiles before the timed ones.

open_clip_torch needs torchvision, which does not install beside the CPU torch of the main environment, so this runs
in its own virtual environment:

    python -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/benchvenv/bin/pip install transformers==5.24.0 accelerate==1.15.0 datasets==5.2.0 open_clip_torch==3.3.0
    /tmp/benchvenv/bin/pip install --no-deps -e .
    nice -n 10 /tmp/benchvenv/bin/python benchmarks/bench_train.py --batch-size 32 --steps 4 [--compile]
"""

import argparse
import json
import math
import os
import statistics

import open_clip
import torch
from accelerate import Accelerator
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.loop import MATMUL_DTYPES, matmul_peak_flops, timed, train_step
from modeling_mode.lib.training.optimization import build_optimizer
from modeling_mode.lib.training.start import ATTENTION

CONTEXT, VOCAB, END_TOKEN = 77, 49408, 49407


def vit_b32_config() -> CLIPConfig:
    """OpenAI's ViT-B/32, the architecture of open_clip's `ViT-B-32-quickgelu`."""
    text = dict(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        max_position_embeddings=CONTEXT,
        hidden_act="quick_gelu",
        eos_token_id=END_TOKEN,
    )
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def synthetic_batch(batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 224, 224, generator=generator)
    tokens = torch.randint(1, END_TOKEN - 1, (batch_size, CONTEXT), generator=generator)
    tokens[:, -1] = END_TOKEN  # full-length captions: both models pool at the end token, neither pads
    return images.to(device), tokens.to(device)


def ours(batch_size: int, precision: str, device, compiled: bool):
    compile_backend = {"dynamo_backend": "inductor"} if compiled else {}  # as train/expert.py --torch-compile
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu", **compile_backend)
    model = CLIPModel._from_config(vit_b32_config(), attn_implementation=ATTENTION)
    args = ExpertTrainingArguments(dataset="-", output="-", max_steps=1, report_to="none")  # CLIP's AdamW settings
    model, optimizer = accelerator.prepare(model, build_optimizer(model, args, accelerator.device))
    images, tokens = synthetic_batch(batch_size, accelerator.device)
    batch = [{"pixel_values": images, "input_ids": tokens, "attention_mask": torch.ones_like(tokens)}]
    return lambda: train_step(model, batch, optimizer, accelerator)


def open_clips(batch_size: int, precision: str, device, compiled: bool):
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).to(device)
    # open_clip's optimizer: no weight decay on 1-d parameters (gains, biases), logit_scale.
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "logit_scale" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.2}],
        lr=5e-4,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = ClipLoss()
    images, tokens = synthetic_batch(batch_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    forward = torch.compile(model) if compiled else model  # open_clip's --torchcompile

    def step():
        with autocast:
            image_features, text_features, logit_scale = forward(images, tokens)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss

    return step


def flops_of(step) -> int:
    """The FLOPs of one step, run eagerly: TorchDynamo called under a dispatch mode (the counter) would give up
    compiling the model for good; under the "force_eager" stance it is not called, and compiles on the next step."""
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side, after two untimed ones")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--compile", action="store_true", help="compile both models with torch.compile (inductor)")
    parser.add_argument("--output", help="also write the results to this JSON file")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    steps = {"mode (transformers + accelerate)": ours, "open_clip": open_clips}
    steps = {name: build(args.batch_size, args.precision, device, args.compile) for name, build in steps.items()}
    flops = {name: flops_of(step) for name, step in steps.items()}
    warm_up = {name: timed(step, device) for name, step in steps.items()}  # compiles, with --compile
    times = {name: [] for name in steps}
    for i in range(args.steps):  # each side goes first every other round: neither always follows the other
        for name in list(steps)[:: 1 if i % 2 == 0 else -1]:
            times[name].append(timed(steps[name], device))
    peak = matmul_peak_flops(device, MATMUL_DTYPES.get(args.precision, torch.float32))

    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "model": "ViT-B/32 (quick-GELU, 77 tokens)",
        "batch_size": args.batch_size,
        "precision": args.precision,
        "compiled": args.compile,
        "matmul_peak_tflops": peak / 1e12,
    }
    for name, seconds in times.items():
        median = statistics.median(seconds)
        results[name] = {
            "warm_up_seconds": warm_up[name],
            "step_seconds_median": median,
            "samples_per_second": args.batch_size / median,
            "step_tflop": flops[name] / 1e12,
            "achieved_tflops": flops[name] / median / 1e12,
            "fraction_of_matmul_peak": flops[name] / median / peak,
        }
    ours_name, theirs_name = list(times)
    results["speedup_vs_open_clip"] = (
        results[ours_name]["samples_per_second"] / results[theirs_name]["samples_per_second"]
    )
    print(json.dumps(results, indent=2))
    if args.output:
        with open(f"{args.output}.partial", "w") as file:
            json.dump(results, file, indent=2)
        os.replace(f"{args.output}.partial", args.output)


if __name__ == "__main__":
    main()
