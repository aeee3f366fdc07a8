"""Pushing a MODE to the Hugging Face Hub: the model and its card; on request each expert and the clustered data.

- `run`: `PushArguments`, the checks of a MODE folder before any commit, `push_run` and `push_experts`;
- `model_card`: the model card of a MODE, rendered from its run's records;
- `command_line`: hub_cards/push.py's (and `mode-push`'s, `python -m modeling_mode.lib.publish`'s) `main`.
"""
