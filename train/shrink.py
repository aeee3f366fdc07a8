"""Take one expert out of a MODE, the others byte-identical (`modeling_mode.lib.growth`, also `mode-shrink`):
--help shows how."""

from modeling_mode.lib import cli
from modeling_mode.lib.growth import main

if __name__ == "__main__":
    cli.run(main)
