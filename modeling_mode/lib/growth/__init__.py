"""Changing a MODE's experts without retraining the others: new ones join it (grow), or one leaves (shrink).

- `run`: `GrowArguments`, `ShrinkArguments`, `grow` and `shrink`;
- `outputs`: a changed MODE's old experts byte-identical to its parent's (`expert_digests`);
- `command_line`: train/grow.py's and train/shrink.py's (`mode-grow`, `mode-shrink`; `python -m
  modeling_mode.lib.growth` grows) `main`s: the change, then its push if asked for.
"""
