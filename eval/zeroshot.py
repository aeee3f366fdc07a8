"""Zero-shot image classification of a CLIPModel or a ModeCLIPModel (`modeling_mode.lib.evaluation`, also
`mode-zeroshot`): --help shows how."""

from modeling_mode.lib.core import cli
from modeling_mode.lib.evaluation.command_line import zero_shot_main as main

if __name__ == "__main__":
    cli.run(main)
