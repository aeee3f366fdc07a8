"""Resharding: each coarse cluster's pairs written to its own webdataset shards, in one pass over the corpus.

- `run`: `ReshardArguments` and the reshard;
- `outputs`: a reshard's files and when it is finished (`check_finished_reshard`, `fine_ids`);
- `command_line`: train/reshard.py's (and `mode-reshard`'s, `python -m modeling_mode.lib.reshard`'s) `main`.
"""
