"""MODE (CLIP data experts via clustering) on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoTokenizer

from .configuration_mode_clip import ModeCLIPConfig, ModeSiglipConfig
from .modeling_mode_clip import ModeCLIPModel, ModeCLIPOutput, ModeSiglipModel
from .tokenization_mode_clip import ModeCLIPTokenizer

# Let the Auto classes and pipelines resolve `mode_clip` and `mode_siglip` without trust_remote_code when this package
# is installed.
for _config_class, _model_class in ((ModeCLIPConfig, ModeCLIPModel), (ModeSiglipConfig, ModeSiglipModel)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(_config_class, _model_class, exist_ok=True)
    AutoTokenizer.register(_config_class, fast_tokenizer_class=ModeCLIPTokenizer, exist_ok=True)

__all__ = [
    "ModeCLIPConfig",
    "ModeCLIPModel",
    "ModeCLIPOutput",
    "ModeCLIPTokenizer",
    "ModeSiglipConfig",
    "ModeSiglipModel",
]
