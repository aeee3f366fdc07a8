"""Cluster an image-caption corpus into MODE's data experts (`modeling_mode.lib.clustering`, also `mode-cluster`):
--help shows how."""

from modeling_mode.lib import cli
from modeling_mode.lib.clustering import main

if __name__ == "__main__":
    cli.run(main)
