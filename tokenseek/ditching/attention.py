"""Attention masks and the attention function used by the kept-token pass.

The kept tokens are run as a "continuation" of a cache that holds every token's
key/value from a no-grad pass. Each kept token at position p must see exactly what
it saw in the full sequence: the cached keys of *unkept* tokens at positions <= p
and the fresh (differentiable) keys of kept tokens at positions <= p, never the
cached copy of a kept token (that would double-count it and hide its gradient).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch
import torch.nn.functional as F

from tokenseek.errors import UnsupportedModelError
from tokenseek.models.introspect import attention_configs, cache_argument, unwrap

KEPT_PASS_ATTENTION = "tokenseek_gqa_sdpa"
_SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


def gqa_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA that keeps grouped K/V heads grouped (``enable_gqa``) even with a custom mask.

    transformers' own SDPA path expands K/V to one copy per query head whenever a
    mask is given; autograd then saves those copies for every layer, which was the
    largest avoidable activation cost of the kept pass.
    """
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(KEPT_PASS_ATTENTION, gqa_sdpa_attention)
    AttentionMaskInterface.register(KEPT_PASS_ATTENTION, sdpa_mask)


def _is_flash_attention(impl: str) -> bool:
    """flash_attention_2/3 and Hub flash kernels ("kernels-community/flash-attn…")."""
    return impl.startswith("flash_attention") or "flash-attn" in impl or "flash_attn" in impl


@contextlib.contextmanager
def kept_pass_attention(model: torch.nn.Module, configs: list | None = None) -> Iterator[None]:
    """Run SDPA models with :func:`gqa_sdpa_attention`; eager models stay as they are.

    Flash attention takes no custom mask (only padding / causal), so a model loaded with
    it runs the context pass with flash attention and falls back to SDPA for the kept
    pass: the cache it reads is the same whichever kernel filled it.
    ``configs``: the model's :func:`attention_configs`, when the caller has them already
    (finding them walks every module, which is slow to repeat for each layer).
    """
    register_attention()
    switched = []
    for config in attention_configs(model) if configs is None else configs:
        impl = config._attn_implementation
        if impl == "sdpa" or (impl is not None and _is_flash_attention(impl)):
            switched.append((config, impl))
            config._attn_implementation_internal = KEPT_PASS_ATTENTION
        elif impl not in ("eager", KEPT_PASS_ATTENTION, None):
            raise UnsupportedModelError(
                f"token ditching needs attention that accepts a custom 4-D mask, but this model uses "
                f"{impl!r}: load it with attn_implementation='sdpa', 'eager' or 'flash_attention_2'"
            )
    try:
        yield
    finally:
        for config, impl in switched:
            config._attn_implementation_internal = impl


def attention_windows(config) -> dict[str, int | None]:
    """Map each attention layer type the model uses to its window (None = full causal)."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return {"sliding_attention" if window else "full_attention": window or None}
    unknown = sorted(set(layer_types) - set(_SUPPORTED_LAYER_TYPES))
    if unknown:
        raise UnsupportedModelError(
            f"token ditching supports full and sliding-window attention layers; this model also has {unknown}"
        )
    return {t: (window if t == "sliding_attention" else None) for t in dict.fromkeys(layer_types)}


def kept_pass_mask(
    positions: torch.Tensor,
    slot_valid: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor,
    window: int | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive mask ``[B, 1, K, n + K]`` for K kept-token queries against n cached + K fresh keys.

    ``positions[b, i]`` is the original position of kept slot i (ascending), ``slot_valid``
    marks real slots (examples keep different numbers of tokens).
    """
    n = keep.shape[1]
    q_pos = positions[:, :, None]  # [B, K, 1]
    cache_pos = torch.arange(n, device=positions.device)[None, None, :]
    cached_ok = (cache_pos <= q_pos) & (~keep & attention_mask.bool())[:, None, :]
    fresh_ok = (positions[:, None, :] <= q_pos) & slot_valid[:, None, :]
    if window is not None:
        cached_ok &= cache_pos > q_pos - window
        fresh_ok &= positions[:, None, :] > q_pos - window
    allowed = torch.cat([cached_ok, fresh_ok], dim=-1)
    # A padding slot attends to one cached key so its (discarded) softmax has no empty row.
    allowed[:, :, 0] |= ~slot_valid
    mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def check_supports_ditching(model: torch.nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming what the model lacks."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        raise UnsupportedModelError("token ditching needs a Hugging Face PreTrainedModel (no .config found)")
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{type(unwrap(model)).__name__} is an encoder-decoder model; token ditching needs a decoder-only causal LM")
    forward = inspect.signature(unwrap(model).forward).parameters
    if cache_argument(model) is None:
        raise UnsupportedModelError(f"{type(unwrap(model)).__name__}.forward takes no KV cache (`cache` / `past_key_values`), which token ditching needs")
    for needed in ("position_ids", "attention_mask"):
        if needed not in forward:
            raise UnsupportedModelError(f"{type(unwrap(model)).__name__}.forward has no `{needed}` argument, which token ditching needs")
    attention_windows(config)
