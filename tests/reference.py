"""An independent reference for ditched gradients (paper Eq. 6), built without the code under test.

One ordinary full-sequence pass in which
- inside every attention layer, the keys/values of unkept tokens are detached, and
- after every decoder layer, the hidden states of unkept tokens are detached,
with the loss taken at kept positions only. Attention is computed explicitly
(matmul + softmax), not through SDPA.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

_state: dict = {}


def _reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    keep = _state["keep"][:, None, :, None]  # [B, 1, n, 1]
    key = torch.where(keep, key, key.detach())
    value = torch.where(keep, value, value.detach())
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if kwargs.get("softcap"):
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    if attention_mask is None:
        n = query.shape[2]
        attention_mask = torch.ones(n, key.shape[2], dtype=torch.bool).tril()[None, None]
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    else:
        scores = scores + attention_mask
    # Fully masked rows (padding queries under a sliding window) give NaN; they are never used.
    probs = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def reference_mode(model, keep: torch.Tensor, layers: torch.nn.ModuleList):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("reference_detached", _reference_attention)
    AttentionMaskInterface.register("reference_detached", sdpa_mask)
    configs = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    for c in configs.values():
        c._attn_implementation_internal = "reference_detached"

    def detach_unkept(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.where(keep[..., None], hidden, hidden.detach())
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [layer.register_forward_hook(detach_unkept) for layer in layers]
    _state["keep"] = keep
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for k, c in configs.items():
            c._attn_implementation_internal = saved[k]
        _state.clear()


def reference_loss(model, input_ids, attention_mask, labels, keep, layers):
    """Mean next-token loss over kept positions with a label, in reference mode."""
    with reference_mode(model, keep, layers):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    targets = targets.masked_fill(~keep, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def grads(model) -> dict[str, torch.Tensor]:
    out = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def max_relative_error(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    worst = 0.0
    for k in a:
        scale = b[k].abs().max().clamp(min=1e-8)
        worst = max(worst, float((a[k] - b[k]).abs().max() / scale))
    return worst
