"""Assemble trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

    python train/assemble.py --experts runs/expert-* --clusters runs/clusters --router-text-model runs/seed \\
        --output runs/mode-clip [--push_to_hub --hub_model_id org/mode-clip [--hub_private_repo]]

The output loads with `AutoModel.from_pretrained(output, trust_remote_code=True)`, its CLIPProcessor with
`AutoProcessor`, and both with the zero-shot pipeline. Bad input ends with one line on stderr and exit status 2; a
push that fails after the model is saved, with status 1.
"""

from hub_cards.push import exiting_on_push_failure, push_run
from modeling_mode.lib import cli
from modeling_mode.lib.assembly import AssembleArguments, assemble


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(AssembleArguments, __doc__, argv)
    assemble(
        args.experts,
        args.clusters,
        args.router_text_model,
        args.output,
        recompute_centroids=args.recompute_centroids,
        **args.router_settings,
    )
    print(f"MODE model with {len(args.experts)} experts saved to {args.output}")
    if args.push_to_hub:
        with exiting_on_push_failure():
            commits = push_run(args.output, args.hub_model_id, private=args.hub_private_repo)
        print(f"pushed: {commits[0].commit_url}")


if __name__ == "__main__":
    cli.run(main)
