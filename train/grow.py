"""Grow a MODE by new data experts, forked from its seed, the others byte-identical (`modeling_mode.lib.growth`,
also `mode-grow`): --help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.growth.command_line import grow_main

if __name__ == "__main__":
    cli.run(grow_main)
