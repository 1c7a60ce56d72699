"""Next-token loss at the kept positions, optionally with the LM head applied in chunks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tokenseek.constants import IGNORE_INDEX
from tokenseek.ditching.forward import ContextCache, ditched_forward, no_logits_kwargs
from tokenseek.models.introspect import capture_final_hidden, logits_from_hidden

# Rows of [positions, vocab] logits alive at once in the chunked loss. The backward of one
# chunk holds about three such tensors (logits, log-softmax, their gradient): 32 x 49k fp32
# is 6 MB each. At 128 rows this was the peak of a checkpointed ditched step at seq 1024
# (111 MiB against 71 MiB at 32; `tokenseek bench --knobs memory`), for no measurable speed.
DEFAULT_LOSS_CHUNK = 32
# How a step's summed loss is divided (see tokenseek.train.trainer).
LOSS_NORMS = ("token", "example")


@dataclass
class LossSums:
    """Per-example summed cross-entropy over kept targets and how many targets that was."""

    total: torch.Tensor  # [B], differentiable
    count: torch.Tensor  # [B], long

    def token_mean(self) -> torch.Tensor:
        return self.total.sum() / self.count.sum().clamp(min=1)

    def example_means(self) -> torch.Tensor:
        """Each example's mean loss; an example with no kept target gives 0 (not NaN)."""
        return self.total / self.count.clamp(min=1)


def kept_targets(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``shift_labels`` restricted to kept positions: entry p is the label of token p+1 if p is kept.

    Same label convention as HF causal LMs (logits at p predict labels[p+1]), so at
    ratio 1.0 the loss equals ``model(input_ids, labels=labels).loss``.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted.masked_fill(~keep.bool(), IGNORE_INDEX)


def _row_losses(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits_from_hidden(model, hidden).float()
    return F.cross_entropy(logits, targets, reduction="none")


def head_loss_sums(model, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = DEFAULT_LOSS_CHUNK) -> LossSums:
    """Per-example summed cross-entropy of the LM head on ``hidden [B, K, d]`` against ``targets [B, K]``.

    Only rows with a target go through the head. With ``chunk > 0`` and more rows than
    ``chunk``, the head runs on ``chunk`` rows at a time under activation checkpointing, so
    neither the forward nor the backward ever holds more than one chunk of ``[rows, vocab]``
    logits (the same numbers as one big cross-entropy; the head's matmul runs twice).
    """
    rows = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    h, t, owner = hidden[rows], targets[rows], rows[0]
    count = torch.bincount(owner, minlength=targets.shape[0])
    if len(t) == 0:  # nothing to learn from: a zero that still has a graph, so backward() works
        return LossSums(hidden.float().sum(dim=(1, 2)) * 0.0, count)
    if chunk <= 0 or len(t) <= chunk:
        per_row = _row_losses(model, h, t)
    else:
        per_row = torch.cat(
            [checkpoint(_row_losses, model, h[i : i + chunk], t[i : i + chunk], use_reentrant=False) for i in range(0, len(t), chunk)]
        )
    total = torch.zeros(targets.shape[0], dtype=per_row.dtype, device=per_row.device).index_add(0, owner, per_row)
    return LossSums(total, count)


def logits_loss_sums(logits: torch.Tensor, targets: torch.Tensor) -> LossSums:
    """Per-example summed cross-entropy of ready-made logits ``[B, K, vocab]`` (no chunking)."""
    per_row = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return LossSums(per_row.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1))


def ditched_loss_sums(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    shift_labels: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    cache: ContextCache | None = None,
    loss_chunk: int = DEFAULT_LOSS_CHUNK,
    context_chunk: int | None = None,
) -> LossSums:
    """Per-example cross-entropy over kept targets; only kept tokens are back-propagated.

    ``loss_chunk=0`` lets the model apply its own LM head inside its forward (what sharded
    setups such as FSDP expect); otherwise the head runs here, in chunks. ``context_chunk``:
    tokens per call of the context pass (None: the device's default).
    """
    out = ditched_forward(model, input_ids, keep, attention_mask, cache=cache, return_hidden=loss_chunk > 0, context_chunk=context_chunk)
    targets = torch.gather(shift_labels, 1, out.positions).masked_fill(~out.slot_valid, IGNORE_INDEX)
    if loss_chunk <= 0:
        return logits_loss_sums(out.logits, targets)
    return head_loss_sums(model, out.hidden, targets, loss_chunk)


def full_loss_sums(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    shift_labels: torch.Tensor,
    *,
    loss_chunk: int = DEFAULT_LOSS_CHUNK,
) -> LossSums:
    """Ordinary (full-token) training loss, with the same chunked head as the ditched loss."""
    if loss_chunk <= 0:
        return logits_loss_sums(model(input_ids=input_ids, attention_mask=attention_mask).logits, shift_labels)
    with capture_final_hidden(model) as final:
        model(input_ids=input_ids, attention_mask=attention_mask, **no_logits_kwargs(model, input_ids.device))
    return head_loss_sums(model, final["hidden"], shift_labels, loss_chunk)


def step_loss_sums(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    shift_labels: torch.Tensor,
    keep: torch.Tensor,
    *,
    cache: ContextCache | None = None,
    loss_chunk: int = DEFAULT_LOSS_CHUNK,
    context_chunk: int | None = None,
) -> LossSums:
    """The training step's loss, as the trainer and the benchmark run it.

    When every real token is kept there is nothing to ditch: one ordinary forward
    (the full-token baseline) instead of the two passes.
    """
    if cache is None and bool((keep.bool() == attention_mask.bool()).all()):
        return full_loss_sums(model, input_ids, attention_mask, shift_labels, loss_chunk=loss_chunk)
    return ditched_loss_sums(
        model, input_ids, shift_labels, keep, attention_mask, cache=cache, loss_chunk=loss_chunk, context_chunk=context_chunk
    )


def ditched_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    loss_chunk: int = DEFAULT_LOSS_CHUNK,
) -> torch.Tensor:
    """Mean next-token loss over kept positions; only kept tokens are back-propagated.

    ``keep`` is a bool ``[B, n]`` mask. Unkept tokens still serve as context but store
    no activations and receive no gradient. Returns 0 (with a graph) if no kept
    position has a label.
    """
    sums = ditched_loss_sums(model, input_ids, kept_targets(labels, keep), keep, attention_mask, loss_chunk=loss_chunk)
    return sums.token_mean()
