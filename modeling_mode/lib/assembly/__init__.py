"""Assembling trained experts, the clustering's outputs and a router into one MODE model.

- `run`: `AssembleArguments` and the assembly;
- `outputs`: an assembled MODE's folder (`ASSEMBLY`, `SEED_FOLDER`), and what every tool that writes one (assemble,
  grow, shrink) checks about its --output;
- `command_line`: train/assemble.py's (and `mode-assemble`'s, `python -m modeling_mode.lib.assembly`'s) `main`: the
  assembly, then its push if asked for.
"""
