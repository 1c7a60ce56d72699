"""Find the parts of an arbitrary Hugging Face decoder model without model-specific code.

One place for what seeking, ditching, evaluation and the benchmark need to know about a
model: the transformers model under PEFT / DDP wrappers, its text config, its decoder body
and layers, the configs that choose its attention function, and how its LM head turns
hidden states into logits.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch

from tokenseek.errors import UnsupportedModelError


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under PEFT / DDP / FSDP wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        elif hasattr(model, "_fsdp_wrapped_module"):  # FSDP 1
            model = model._fsdp_wrapped_module
        else:
            return model


# The forward argument that takes a KV cache: transformers 5.24 renamed ``past_key_values`` to
# ``cache`` (the old name is accepted with a deprecation warning until 5.40); newest first.
CACHE_ARGUMENTS = ("cache", "past_key_values")


def cache_argument(model: torch.nn.Module) -> str | None:
    """The name under which ``model.forward`` takes a KV cache, or None if it takes none."""
    parameters = inspect.signature(unwrap(model).forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


def with_cache(model: torch.nn.Module, cache: Any) -> dict:
    """``{argument: cache}`` for ``model(**...)`` under the name this transformers version uses."""
    name = cache_argument(model)
    if name is None:
        raise UnsupportedModelError(f"{type(unwrap(model)).__name__}.forward takes no KV cache (no `cache` or `past_key_values` argument)")
    return {name: cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (``output.cache`` from transformers 5.24, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def enable_checkpointing(model: torch.nn.Module, *, use_reentrant: bool = False) -> None:
    """Turn on transformers' activation (gradient) checkpointing under this version's name
    (``activation_checkpointing_enable`` in 5.23+; ``gradient_checkpointing_enable`` warns
    there and goes in v6, but is all that older releases have)."""
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_checkpointing(model: torch.nn.Module) -> None:
    """Turn activation checkpointing off again (see :func:`enable_checkpointing`)."""
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def text_config(model):
    """The decoder's config (the text part of a multimodal config)."""
    config = unwrap(model).config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def attention_configs(model: torch.nn.Module) -> list:
    """Every distinct config inside the model that selects an attention implementation."""
    seen, configs = set(), []
    for module in model.modules():
        # The instance dict, not getattr: nn.Module.__getattr__ raises (slowly) for each of the
        # thousands of modules without a config; a module's config is an ordinary attribute.
        config = vars(module).get("config")
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen.add(id(config))
            configs.append(config)
    return configs


def decoder_layers(model) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks (``model.layers``, ``transformer.h``, ``gpt_neox.layers`` …)."""
    count = text_config(model).num_hidden_layers
    for module in unwrap(model).modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UnsupportedModelError(f"could not find the {count} decoder layers of {type(unwrap(model)).__name__}")


def decoder(model) -> torch.nn.Module:
    """The body that ends with the final norm (its output is what the LM head reads).

    PEFT calls the causal LM's ``forward`` directly, so hooks on the outer model miss it;
    the body is always called through ``__call__``, so hooks on it see every pass.
    """
    base = unwrap(model)
    getter = getattr(base, "get_decoder", None)
    body = getter() if getter else None
    if body is None or body is base:
        raise UnsupportedModelError(f"{type(base).__name__} has no get_decoder(): scoring needs the decoder body")
    return body


@contextlib.contextmanager
def capture_final_hidden(model) -> Iterator[dict]:
    """Record the decoder body's output (post final norm), which the LM head reads, as ``found["hidden"]``."""
    found: dict = {}

    def hook(module, args, output):
        found["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder(model).register_forward_hook(hook)
    try:
        yield found
    finally:
        handle.remove()


def logits_from_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head as the CausalLM forward would, including the known logit rescalings."""
    base = unwrap(model)
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


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a measurement pass without dropout, then restore every module's train/eval flag."""
    modules = list(model.modules())
    if not all(_only_sets_flag(m) for m in modules):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)
        return
    # nn.Module.train sets each flag through nn.Module.__setattr__, about 4 µs a module: 20 ms
    # per ditched step for SmolLM2 with LoRA (2,499 modules), which a GPU step of 0.6 s notices
    # (experiments/step_overhead.py). Writing the flags directly does the same in 1 ms.
    flags = [m.training for m in modules]
    for m in modules:
        m.__dict__["training"] = False
    try:
        yield model
    finally:
        for m, flag in zip(modules, flags):
            m.__dict__["training"] = flag


def _only_sets_flag(module: torch.nn.Module) -> bool:
    """Whether ``module.train(mode)`` does nothing but set ``training`` (and recurse)."""
    train = type(module).train
    if train is torch.nn.Module.train:
        return True
    # transformers' override only re-selects hub kernels, and only for a model that uses them.
    return train is _pretrained_train() and not getattr(module, "use_kernels", False)


def _pretrained_train():
    from transformers import PreTrainedModel

    return PreTrainedModel.train
