"""MODE (CLIP data experts via clustering) on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoTokenizer

from .configuration_mode_clip import ModeCLIPConfig
from .modeling_mode_clip import ModeCLIPModel, ModeCLIPOutput
from .tokenization_mode_clip import ModeCLIPTokenizer

# Let the Auto classes and pipelines resolve `mode_clip` without trust_remote_code when this package is installed.
AutoConfig.register(ModeCLIPConfig.model_type, ModeCLIPConfig, exist_ok=True)
AutoModel.register(ModeCLIPConfig, ModeCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(ModeCLIPConfig, ModeCLIPModel, exist_ok=True)
AutoTokenizer.register(ModeCLIPConfig, fast_tokenizer_class=ModeCLIPTokenizer, exist_ok=True)

__all__ = ["ModeCLIPConfig", "ModeCLIPModel", "ModeCLIPOutput", "ModeCLIPTokenizer"]
