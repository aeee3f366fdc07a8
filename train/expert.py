"""Train a MODE seed or data expert (`modeling_mode.lib.training`, also `mode-train-expert`): --help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.training.command_line import main

if __name__ == "__main__":
    cli.run(main)
