"""Push a MODE run to the Hugging Face Hub (`modeling_mode.lib.publish`, also `mode-push`): --help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.publish.command_line import main

if __name__ == "__main__":
    cli.run(main)
