"""Assemble trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

    python train/assemble.py --experts runs/expert-* --clusters runs/clusters \
        --router-text-model runs/seed --output runs/mode-clip [--push-to-hub org/mode-clip [--private]]

The output loads with `AutoModel.from_pretrained(output, trust_remote_code=True)` and the zero-shot pipeline.
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hub_cards import PushError, check_repo_id, push_run
from modeling_mode.lib.assembly import assemble
from modeling_mode.lib.cli import run


@dataclass
class AssembleArguments:
    experts: list[str] = field(metadata={"help": "Expert run directories (train/expert.py outputs), any order."})
    clusters: str = field(metadata={"help": "Clustering output: clusters.safetensors, clusters.json, dataset/."})
    router_text_model: str = field(metadata={"help": "The seed CLIP: its text tower routes tasks; its processor."})
    output: str = field(metadata={"help": "Directory of the assembled ModeCLIPModel."})
    recompute_centroids: bool = field(
        default=False,
        metadata={"help": "Re-express the fine centroids in the router's space even if the clustering used it."},
    )
    routing: str = field(default="paper", metadata={"help": "paper, released or uniform."})
    router_lambda: float = field(default=0.2, metadata={"help": "Kernel width of the paper's routing."})
    router_top_k: int | None = field(default=None, metadata={"help": "Keep only the k highest-weighted experts."})
    router_temperature: float = field(default=8.0, metadata={"help": "Softmax temperature of the released routing."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Then push the model with its card to this Hub repo (hub_cards/push.py)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repo private."})


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(AssembleArguments).parse_args_into_dataclasses(argv)
    if args.push_to_hub:
        check_repo_id(args.push_to_hub, "--push-to-hub")  # before the assembly, not after it
    assemble(
        args.experts,
        args.clusters,
        args.router_text_model,
        args.output,
        recompute_centroids=args.recompute_centroids,
        routing=args.routing,
        router_lambda=args.router_lambda,
        router_top_k=args.router_top_k,
        router_temperature=args.router_temperature,
    )
    print(f"MODE model with {len(args.experts)} experts saved to {args.output}")
    if args.push_to_hub:
        try:
            commits = push_run(args.output, args.push_to_hub, private=args.private)
        except PushError as error:  # the Hub's failure, not the input's: status 1, and the model stays saved
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        print(f"pushed: {commits[0].commit_url}")


if __name__ == "__main__":
    run(main)
