"""The bytes of a MODE of full experts against a MODE of LoRA experts on one seed, from the shapes alone.

    python benchmarks/bench_lora_bytes.py [--ranks 4 16] [--experts 4 8]

Each MODE is built on the meta device (no memory, no weights) from OpenAI CLIP ViT-B/32's and ViT-L/14's
architectures, routed by the seed's text tower (the MODE's own router, stored in model.safetensors too), with
`ModeCLIPModel`'s default LoRA layers (every attention and MLP linear of both towers' encoder layers). The figure is
what model.safetensors holds in float32: every stored tensor's elements times 4 bytes (half of it in bfloat16).
"""

import argparse

import torch
from transformers import CLIPConfig

from modeling_mode import ModeCLIPConfig
from modeling_mode.modeling_mode_clip import MODE_MODELS

# OpenAI CLIP's architectures (width, layers, heads of each tower; patch; image size; embedding size).
ARCHITECTURES = {
    "ViT-B/32": dict(vision=(768, 12, 12), text=(512, 12, 8), patch=32, image=224, embed=512),
    "ViT-L/14": dict(vision=(1024, 24, 16), text=(768, 12, 12), patch=14, image=224, embed=768),
}


def clip_config(vision, text, patch, image, embed) -> CLIPConfig:
    def tower(width, layers, heads):
        return dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                    num_attention_heads=heads)  # fmt: skip

    return CLIPConfig(text_config=tower(*text), vision_config=dict(tower(*vision), patch_size=patch, image_size=image),
                      projection_dim=embed)  # fmt: skip


def stored_bytes(expert_config: CLIPConfig, num_experts: int, lora_rank: int | None) -> int:
    config = ModeCLIPConfig(expert_config=expert_config, num_experts=num_experts, lora_rank=lora_rank)
    with torch.device("meta"):
        model = MODE_MODELS[config.model_type](config)
    return sum(tensor.numel() for tensor in model.state_dict().values()) * 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    print("| architecture | experts | full experts | " + " | ".join(f"LoRA rank {r}" for r in args.ranks) + " |")
    print("|---|---|---|" + "---|" * len(args.ranks))
    for name, shapes in ARCHITECTURES.items():
        config = clip_config(**shapes)
        for n in args.experts:
            full = stored_bytes(config, n, None)
            lora = [stored_bytes(config, n, rank) for rank in args.ranks]
            cells = " | ".join(f"{size / 1e9:.2f} GB ({size / full:.1%})" for size in lora)
            print(f"| {name} | {n} | {full / 1e9:.2f} GB | {cells} |")


if __name__ == "__main__":
    main()
