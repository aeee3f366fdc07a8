"""`python -m modeling_mode.lib.reshard`: train/reshard.py, for launchers that start a module (`-m`)."""

from .command_line import command

if __name__ == "__main__":
    command()
