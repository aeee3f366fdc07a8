"""The library behind the scripts: clustering, training, assembly, evaluation, the main job and the Hub push.

Unlike the files beside this folder (`configuration_mode_clip.py`, `modeling_mode_clip.py`, `routing.py`), which
travel to the Hub as remote code and import only torch and transformers, these modules need datasets, accelerate,
faiss and the rest of the project's dependencies. Import them explicitly:
`from modeling_mode.lib import training`.
"""
