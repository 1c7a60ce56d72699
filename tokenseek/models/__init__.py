"""Loading causal language models and wrapping them with PEFT adapters."""

from tokenseek.models.loading import DEFAULT_MODEL_NAME, default_model_path, load_model, load_tokenizer
from tokenseek.models.adapters import PEFT_METHODS, apply_peft

__all__ = [
    "DEFAULT_MODEL_NAME",
    "PEFT_METHODS",
    "apply_peft",
    "default_model_path",
    "load_model",
    "load_tokenizer",
]
