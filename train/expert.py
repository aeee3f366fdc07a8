"""Train a MODE seed or data expert (`modeling_mode.lib.training`, also `mode-train-expert`): --help shows how."""

from modeling_mode.lib import cli
from modeling_mode.lib.training import main

if __name__ == "__main__":
    cli.run(main)
