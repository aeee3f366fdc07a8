"""Take one expert out of a MODE, the others byte-identical (`modeling_mode.lib.growth`, also `mode-shrink`):
--help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.growth.command_line import shrink_main

if __name__ == "__main__":
    cli.run(shrink_main)
