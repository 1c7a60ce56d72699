"""Gradient score: |dL/dz| summed over the hidden dimension at the input of a late decoder layer (Eq. 4).

A *partial* backward: every parameter is frozen and the hidden state entering the
scored layer is cut from the graph and made a leaf, so autograd records only the
last ``layers_back`` layers, the final norm and the LM head. The LM head runs on
response chunks, so the [n, vocab] logits are never all alive at once.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from tokenseek.constants import IGNORE_INDEX
from tokenseek.models.introspect import decoder_layers, logits_from_hidden

# Target rows whose logits are alive at once. One chunk holds about three [rows, vocab]
# tensors (logits, log-softmax, their gradient): 64 x 49k fp32 is 12 MB each. At 256 rows
# this was online seeking's step peak (245 MiB above the weights at seq 1024, against 71 MiB
# for the offline-scored step); the rows are independent, so the scores do not change.
LOGIT_CHUNK = 64
GRAD_MODES = ("abs", "signed")


@contextlib.contextmanager
def frozen(model) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def leaf_at_layer(model, layers_back: int) -> Iterator[dict]:
    """Make the hidden state entering decoder layer ``N - layers_back`` a grad-requiring leaf."""
    layers = decoder_layers(model)
    if not 1 <= layers_back <= len(layers):
        raise ValueError(f"layers_back must be in 1..{len(layers)}")
    found: dict = {}

    def hook(module, args, kwargs):
        if args:
            hidden = args[0].detach().requires_grad_(True)
            args = (hidden, *args[1:])
        else:
            hidden = kwargs["hidden_states"].detach().requires_grad_(True)
            kwargs = {**kwargs, "hidden_states": hidden}
        found["hidden"] = hidden
        return args, kwargs

    handle = layers[len(layers) - layers_back].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield found
    finally:
        handle.remove()


def per_example_loss_grad(model, final: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """dL/d(final hidden), L = Σ_examples mean next-token loss of that example, in chunks of rows.

    Per-example means make each example's score independent of what it is batched with.
    Only positions with a target go through the LM head (the gradient is 0 elsewhere), so
    prompt tokens cost nothing here.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    counts = (shifted != IGNORE_INDEX).sum(dim=1).clamp(min=1).to(final.dtype)
    rows, cols = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)
    grad = torch.zeros_like(final)
    for start in range(0, len(rows), LOGIT_CHUNK):
        r, c = rows[start : start + LOGIT_CHUNK], cols[start : start + LOGIT_CHUNK]
        h = final[r, c].detach().requires_grad_(True)
        logits = logits_from_hidden(model, h)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = F.cross_entropy(logits, shifted[r, c], reduction="none")
        (chunk_grad,) = torch.autograd.grad((loss / counts[r]).sum(), h)
        grad[r, c] = chunk_grad
    return grad


def reduce_gradient(grad: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """[B, n, d] -> [B, n]: Σ_k |G_jk| (the text's "magnitudes", default) or Σ_k G_jk (Eq. 4 as printed)."""
    if mode == "abs":
        return grad.abs().sum(dim=-1)
    if mode == "signed":
        return grad.sum(dim=-1)
    raise ValueError(f"unknown gradient mode {mode!r}: choose one of {GRAD_MODES}")
