"""Assemble trained experts, the clustering's outputs and the seed's text tower into a MODE model
(`modeling_mode.lib.assembly`, also `mode-assemble`): --help shows how."""

from modeling_mode.lib.assembly.command_line import main
from modeling_mode.lib.core import cli

if __name__ == "__main__":
    cli.run(main)
