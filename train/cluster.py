"""Cluster an image-caption corpus into MODE's data experts (`modeling_mode.lib.clustering`, also `mode-cluster`):
--help shows how."""

from modeling_mode.lib.clustering.command_line import main
from modeling_mode.lib.core import cli

if __name__ == "__main__":
    cli.run(main)
