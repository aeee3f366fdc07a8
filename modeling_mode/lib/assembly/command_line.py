"""The command line of the assembly: train/assemble.py, `mode-assemble`, `python -m modeling_mode.lib.assembly`: the
assembly (`run`), then its push (`publish`) if asked for."""

from ..core import cli
from ..hub.commits import exiting_on_push_failure
from ..publish.run import push_run
from .run import AssembleArguments, assemble

# train/assemble.py's --help (and `mode-assemble`'s, `python -m modeling_mode.lib.assembly`'s).
DESCRIPTION = """\
Assemble trained experts, the clustering's outputs and the seed's text tower (the router) into a MODE model.

    python train/assemble.py --experts runs/expert-* --clusters runs/clusters --router-text-model runs/seed \\
        --output runs/mode-clip [--push_to_hub --hub_model_id org/mode-clip [--hub_private_repo]]

`mode-assemble` and `python -m modeling_mode.lib.assembly` take the same flags.

The output loads with `AutoModel.from_pretrained(output, trust_remote_code=True)`, its CLIPProcessor with
`AutoProcessor`, and both with the zero-shot pipeline. Bad input ends with one line on stderr and exit status 2; a
push that fails after the model is saved, with status 1.
"""


def main(argv: list[str] | None = None) -> None:
    """train/assemble.py: the assembly, then its push if asked for."""
    args = cli.parse(AssembleArguments, DESCRIPTION, argv)
    assemble(
        args.experts,
        args.clusters,
        args.router_text_model,
        args.output,
        recompute_centroids=args.recompute_centroids,
        router_space=args.router,
        with_seed=args.save_seed,
        dataset=args.dataset,
        overwrite_output_dir=args.overwrite_output_dir,
        **args.router_settings,
    )
    print(f"MODE model with {len(args.experts)} experts saved to {args.output}")
    if args.push_to_hub:
        with exiting_on_push_failure():
            commits = push_run(args.output, args.hub_model_id, private=args.hub_private_repo)
        print(f"pushed: {commits[0].commit_url}")


def command() -> None:
    """The command line (`mode-assemble`, `python -m modeling_mode.lib.assembly`, train/assemble.py): `main`, bad
    input ending with exit status 2 (`cli.run`)."""
    cli.run(main)
