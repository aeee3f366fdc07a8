"""Assemble trained experts, the clustering's outputs and the seed's text tower into a MODE model
(`modeling_mode.lib.assembly`, also `mode-assemble`): --help shows how."""

from modeling_mode.lib import cli
from modeling_mode.lib.assembly import main

if __name__ == "__main__":
    cli.run(main)
