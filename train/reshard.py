"""Write each coarse cluster's pairs to its own webdataset shards (`modeling_mode.lib.reshard`, also `mode-reshard`):
--help shows how."""

from modeling_mode.lib import cli
from modeling_mode.lib.reshard import main

if __name__ == "__main__":
    cli.run(main)
