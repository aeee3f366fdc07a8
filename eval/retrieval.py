"""Image-to-text and text-to-image retrieval of a CLIPModel or a ModeCLIPModel (`modeling_mode.lib.evaluation`, also
`mode-retrieval`): --help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.evaluation.command_line import retrieval_main as main

if __name__ == "__main__":
    cli.run(main)
