"""`python -m modeling_mode.lib.assembly`: train/assemble.py, for launchers that start a module (`-m`)."""

from .command_line import command

if __name__ == "__main__":
    command()
