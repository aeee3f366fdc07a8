"""`python -m modeling_mode.lib.publish`: hub_cards/push.py, for launchers that start a module (`-m`)."""

from .command_line import command

if __name__ == "__main__":
    command()
