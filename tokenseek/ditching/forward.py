"""The two-pass ditched forward: full context without grad, kept tokens with grad.

Pass 1 runs the whole sequence under ``no_grad`` and fills a KV cache, so every
token still acts as context and nothing of it is stored for backward. Pass 2 runs
only the kept tokens, at their original positions, against that cache. Forward
values equal the full-sequence ones; autograd only sees the kept tokens — the
paper's Algorithm 1 / Eq. 6 without touching any model's code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from tokenseek.ditching.attention import (
    attention_windows,
    check_supports_ditching,
    kept_pass_attention,
    kept_pass_mask,
)
from tokenseek.models.introspect import unwrap


@dataclass
class DitchedOutput:
    logits: torch.Tensor  # [B, K, vocab], one row per kept slot
    positions: torch.Tensor  # [B, K] original position of each kept slot
    slot_valid: torch.Tensor  # [B, K] False for padding slots (examples keep different counts)


def kept_slots(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the kept tokens, in order, padded to the largest count in the batch."""
    counts = keep.sum(dim=1)
    width = int(counts.max()) if keep.numel() else 0
    # A stable sort of "not kept" brings the kept positions to the front, in order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    positions = order[:, :width]
    slot_valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return positions.masked_fill(~slot_valid, 0), slot_valid


def _no_logits(model) -> dict:
    """Ask the model for no logits at all in the context pass (the LM head is the costliest matmul)."""
    if "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters:
        return {"logits_to_keep": torch.zeros(0, dtype=torch.long)}
    return {}


def ditched_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> DitchedOutput:
    """Logits at the kept positions, differentiable only through the kept tokens."""
    from transformers import DynamicCache

    check_supports_ditching(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = keep.bool() & attention_mask.bool()
    batch, length = input_ids.shape
    position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)

    # No config: a config-built cache would trim sliding-window layers, and the
    # kept pass indexes the cache by absolute position.
    cache = DynamicCache()
    no_logits = _no_logits(model)
    if "logits_to_keep" in no_logits:
        no_logits["logits_to_keep"] = no_logits["logits_to_keep"].to(input_ids.device)
    # The context pass runs in eval mode: it stores nothing and receives no gradient, so
    # dropout there (LoRA's included) would only add noise to the context and cost time —
    # drawing the random masks was about a third of this pass on CPU.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                **no_logits,
            )
    finally:
        model.train(was_training)

    positions, slot_valid = kept_slots(keep)
    dtype = unwrap(model).get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    windows = attention_windows(unwrap(model).config)
    masks = {
        layer_type: kept_pass_mask(positions, slot_valid, keep, attention_mask, window, dtype)
        for layer_type, window in windows.items()
    }
    mask = masks if len(masks) > 1 else next(iter(masks.values()))
    with kept_pass_attention(model):
        out = model(
            input_ids=torch.gather(input_ids, 1, positions),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
    return DitchedOutput(logits=out.logits, positions=positions, slot_valid=slot_valid)
