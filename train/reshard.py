"""Write each coarse cluster's pairs to its own webdataset shards (`modeling_mode.lib.reshard`, also `mode-reshard`):
--help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.reshard.command_line import main

if __name__ == "__main__":
    cli.run(main)
