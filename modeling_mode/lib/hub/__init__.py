"""What every push to the Hugging Face Hub shares.

- `flags`: `HubArguments`, the Hub flags of the tools that can push (`--push_to_hub --hub_model_id`);
- `commits`: one commit per repo, whole or not at all, naming no local path; `PushError`, status 1 on a failed push;
- `cards`: what the cards share: the templates (`templates/*.md`, package data), records without local paths;
- `templates/`: the model, dataset and expert card templates.

A clustering's dataset repo is pushed by `clustering.push`, a MODE and its experts by `publish`.
"""
