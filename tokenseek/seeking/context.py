"""Context score: the attention each token *receives* in the last decoder layer (Eq. 3).

The model keeps running its normal SDPA attention; only in the last layer do we
also form softmax(QK^T) in chunks of queries and add up its columns, so no n x n
map is ever held for more than one chunk, and no other layer pays anything.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from tokenseek.models.introspect import attention_configs
from tokenseek.errors import UnsupportedModelError
from tokenseek.models.introspect import text_config

SCORING_ATTENTION = "tokenseek_scoring_sdpa"
QUERY_CHUNK = 256


@dataclass
class _Capture:
    layer_idx: int
    padding: torch.Tensor | None = None  # [B, n] 1 = real token
    scores: torch.Tensor | None = field(default=None)


_active: list[_Capture] = []


def _column_sums(module, query, key, attention_mask, scaling, softcap) -> torch.Tensor:
    """Σ_i A_ij averaged over query heads, in query chunks. Returns [B, n_keys]."""
    batch, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    # GQA: each query head attends through its shared K/V head; every *query* head counts once.
    key = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    scale = scaling if scaling is not None else dim**-0.5
    capture = _active[-1]
    # At least float32 for the softmax, but keep float64 when the model runs in it.
    dtype = torch.promote_types(query.dtype, torch.float32)
    sums = torch.zeros(batch, key.shape[2], dtype=dtype, device=query.device)
    for start in range(0, q_len, QUERY_CHUNK):
        q = query[:, :, start : start + QUERY_CHUNK].to(dtype)
        logits = torch.matmul(q, key.to(dtype).transpose(-1, -2)) * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if attention_mask is not None:
            mask = attention_mask[:, :, start : start + QUERY_CHUNK]
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.to(dtype)
        else:  # transformers drops the mask when plain causal attention suffices
            rows = torch.arange(start, start + q.shape[2], device=q.device)[:, None]
            logits = logits.masked_fill(torch.arange(key.shape[2], device=q.device)[None, :] > rows, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        if capture.padding is not None:
            # Padding queries attend somewhere too; they are not tokens of the example.
            probs = probs * capture.padding[:, None, start : start + QUERY_CHUNK, None].to(probs.dtype)
        sums += probs.sum(dim=2).mean(dim=1)
    return sums


def scoring_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _active and getattr(module, "layer_idx", None) == _active[-1].layer_idx:
        with torch.no_grad():
            _active[-1].scores = _column_sums(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
    if kwargs.get("softcap") is not None:
        from transformers.integrations.sdpa_attention import repeat_kv

        # SDPA has no softcap; reproduce eager attention for the models that use it (Gemma 2).
        groups = query.shape[1] // key.shape[1]
        k, v = repeat_kv(key, groups), repeat_kv(value, groups)
        w = torch.matmul(query, k.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
        w = torch.tanh(w / kwargs["softcap"]) * kwargs["softcap"]
        if attention_mask is not None:
            w = w + attention_mask if attention_mask.dtype != torch.bool else w.masked_fill(~attention_mask, float("-inf"))
        w = torch.softmax(w.float(), dim=-1).to(query.dtype)
        return torch.matmul(w, v).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SCORING_ATTENTION, scoring_attention)
    AttentionMaskInterface.register(SCORING_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def capture_context_scores(model, padding: torch.Tensor | None) -> Iterator[_Capture]:
    """While active, the model's forward records last-layer column sums into the yielded object."""
    _register()
    capture = _Capture(layer_idx=text_config(model).num_hidden_layers - 1, padding=padding)
    saved = []
    for config in attention_configs(model):
        if config._attn_implementation not in ("sdpa", "eager", None):
            raise UnsupportedModelError(
                f"scoring needs sdpa or eager attention, but this model uses {config._attn_implementation!r}: "
                "load it with attn_implementation='sdpa'"
            )
        saved.append((config, config._attn_implementation))
        config._attn_implementation_internal = SCORING_ATTENTION
    _active.append(capture)
    try:
        yield capture
    finally:
        _active.remove(capture)
        for config, impl in saved:
            config._attn_implementation_internal = impl
    if capture.scores is None:
        raise UnsupportedModelError(
            "the last decoder layer's attention was not seen while scoring: the model's attention modules "
            "need a `layer_idx` attribute and the attention interface of transformers >= 5"
        )
