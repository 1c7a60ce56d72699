"""Find the parts of an arbitrary HF decoder model that scoring needs, without model-specific code."""

from __future__ import annotations

import torch

from tokenseek.ditching.attention import _unwrap
from tokenseek.errors import UnsupportedModelError


def text_config(model):
    config = _unwrap(model).config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def decoder_layers(model) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks (``model.layers``, ``transformer.h``, ``gpt_neox.layers`` …)."""
    count = text_config(model).num_hidden_layers
    for module in _unwrap(model).modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UnsupportedModelError(f"could not find the {count} decoder layers of {type(_unwrap(model)).__name__}")


def decoder(model) -> torch.nn.Module:
    """The body that ends with the final norm (its output is what the LM head reads)."""
    base = _unwrap(model)
    getter = getattr(base, "get_decoder", None)
    body = getter() if getter else None
    if body is None or body is base:
        raise UnsupportedModelError(f"{type(base).__name__} has no get_decoder(): scoring needs the decoder body")
    return body


def logits_from_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head as the CausalLM forward would, including the known logit rescalings."""
    base = _unwrap(model)
    config = text_config(model)
    logits = base.get_output_embeddings()(hidden)
    if getattr(config, "logit_scale", None) is not None and "cohere" in config.model_type:
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
