"""The training step of a LoRA expert against a full expert's, in one process: same model, batch and precision.

    python benchmarks/bench_lora_step.py [--model converged|vit-b32] [--batch-size 128] [--steps 6] [--rank 4]

Both sides run `lib.training.loop.train_step` (forward, CLIP's contrastive loss, backward, AdamW, temperature clamp)
under Accelerate on the same synthetic batch. The full expert trains every weight. The LoRA expert is the same model
wrapped by `lib.training.lora.adapt`, as `train/expert.py --lora-rank` wraps it: PEFT adapters on the default layers,
the rest frozen, AdamW over the adapters alone. Steps alternate between the two sides, each going first every other
round, so that other programs' load hits both alike; the figures are medians. `converged` is the main job's
`offline-mix-converged` model (width 64, 2 layers, 32-pixel images, patch 8); `vit-b32` is OpenAI's ViT-B/32.
"""

import argparse
import statistics

import torch
from accelerate import Accelerator
from transformers import CLIPConfig, CLIPModel

from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.loop import timed, train_step
from modeling_mode.lib.training.lora import adapt
from modeling_mode.lib.training.optimization import build_optimizer
from modeling_mode.lib.training.processors import char_level_clip_config
from modeling_mode.lib.training.start import ATTENTION

MODELS = {  # width, layers, heads, image size, patch size (both towers alike, as the job's random starts)
    "converged": (64, 2, 2, 32, 8),
    "vit-b32": (768, 12, 12, 224, 32),
}


def step_of(config: CLIPConfig, batch_size: int, lora_rank: int | None):
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    model = CLIPModel._from_config(config, attn_implementation=ATTENTION)
    args = ExpertTrainingArguments(dataset="-", output="-", max_steps=1, report_to="none", lora_rank=lora_rank)
    if lora_rank:
        model = adapt(model, args)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model, optimizer = accelerator.prepare(model, build_optimizer(model, args, accelerator.device))
    generator = torch.Generator().manual_seed(0)
    size, context = config.vision_config.image_size, config.text_config.max_position_embeddings
    images = torch.randn(batch_size, 3, size, size, generator=generator)
    tokens = torch.randint(2, config.text_config.vocab_size, (batch_size, context), generator=generator)
    tokens[:, -1] = config.text_config.eos_token_id  # full-length captions: no padding on either side
    batch = [{"pixel_values": images, "input_ids": tokens, "attention_mask": torch.ones_like(tokens)}]
    batch = [{name: x.to(accelerator.device) for name, x in batch[0].items()}]
    return (lambda: train_step(model, batch, optimizer, accelerator)), trained, accelerator.device


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="converged")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side, after two untimed ones")
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()
    config = CLIPConfig(**char_level_clip_config(*MODELS[args.model]))
    sides = {"full": step_of(config, args.batch_size, None), "lora": step_of(config, args.batch_size, args.rank)}
    times = {name: [] for name in sides}
    for round_ in range(args.steps + 2):
        order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
        for name in order:
            step, _, device = sides[name]
            seconds = timed(step, device)
            if round_ >= 2:  # the first two: warm-up
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.model}, batch {args.batch_size}, LoRA rank {args.rank}, {args.steps} timed steps a side:")
    for name, (_, trained, device) in sides.items():
        print(f"  {name}: {median[name] * 1e3:.1f} ms a step ({args.batch_size / median[name]:.0f} pairs/s on "
              f"{device.type}), {trained:,} trained parameters")  # fmt: skip
    print(f"  LoRA / full step time: {median['lora'] / median['full']:.2f}")


if __name__ == "__main__":
    main()
