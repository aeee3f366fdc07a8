"""`python -m modeling_mode.lib.growth`: train/grow.py, for launchers that start a module (`-m`)."""

from .command_line import grow_command

if __name__ == "__main__":
    grow_command()
