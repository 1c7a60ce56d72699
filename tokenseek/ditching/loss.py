"""Next-token loss at the kept positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenseek.constants import IGNORE_INDEX
from tokenseek.ditching.forward import ditched_forward


def kept_targets(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``shift_labels`` restricted to kept positions: entry p is the label of token p+1 if p is kept.

    Same label convention as HF causal LMs (logits at p predict labels[p+1]), so at
    ratio 1.0 the loss equals ``model(input_ids, labels=labels).loss``.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted.masked_fill(~keep.bool(), IGNORE_INDEX)


def ditched_loss_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    shift_labels: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over kept targets and their count (for accumulation-exact means)."""
    out = ditched_forward(model, input_ids, keep, attention_mask)
    targets = torch.gather(shift_labels, 1, out.positions).masked_fill(~out.slot_valid, IGNORE_INDEX)
    logits = out.logits.float()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total, (targets != IGNORE_INDEX).sum()


def step_loss_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    shift_labels: torch.Tensor,
    keep: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's summed loss and target count, as the trainer and the benchmark run it.

    When every real token is kept there is nothing to ditch: one ordinary forward
    (the full-token baseline) instead of the two passes.
    """
    if bool((keep.bool() == attention_mask.bool()).all()):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total, (shift_labels != IGNORE_INDEX).sum()
    return ditched_loss_sum(model, input_ids, shift_labels, keep, attention_mask)


def ditched_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token loss over kept positions; only kept tokens are back-propagated.

    ``keep`` is a bool ``[B, n]`` mask. Unkept tokens still serve as context but store
    no activations and receive no gradient. Returns 0 (with a graph) if no kept
    position has a label.
    """
    total, count = ditched_loss_sum(model, input_ids, kept_targets(labels, keep), keep, attention_mask)
    return total / count.clamp(min=1)
