"""The library behind the scripts: clustering, training, assembly, growth, evaluation and the Hub push.

Unlike the files beside this folder (`configuration_mode_clip.py`, `modeling_mode_clip.py`, `routing.py`,
`tokenization_mode_clip.py`), which travel to the Hub as remote code and import only torch and transformers, these
modules need datasets, accelerate, faiss and the rest of the project's dependencies. Its subpackages, each listing its
modules (docs/architecture.md draws which imports which): `core`, `data`, `hub`, `clustering`, `reshard`, `training`,
`evaluation`, `publish`, `assembly`, `growth`. Import a module explicitly:
`from modeling_mode.lib.training.loop import train`.
"""
