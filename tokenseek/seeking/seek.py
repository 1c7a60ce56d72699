"""Score a batch: context and gradient scores from one forward and one partial backward."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenseek.constants import IGNORE_INDEX
from tokenseek.errors import TokenSeekError
from tokenseek.seeking.context import capture_context_scores
from tokenseek.models.introspect import capture_final_hidden, eval_mode
from tokenseek.seeking.gradient import frozen, leaf_at_layer, per_example_loss_grad, reduce_gradient
from tokenseek.seeking.select import (
    DEFAULT_RATIO,
    DEFAULT_SELECT_FROM,
    candidate_positions,
    combined_score,
    reads_gradient,
    score_weights,
    select_keep,
)


@dataclass
class SeekResult:
    context: torch.Tensor  # [B, n] attention received in the last layer (0 at padding)
    gradient: torch.Tensor  # [B, n] gradient score at the scored layer (0 at padding)
    combined: torch.Tensor  # [B, n] Eq. 5 (-inf at padding)
    keep: torch.Tensor  # [B, n] bool


def score_batch(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    layers_back: int = 1,
    grad_mode: str = "abs",
    return_grad_map: bool = False,
    with_gradient: bool = True,
):
    """Context and gradient scores for a padded batch: ``(context [B,n], gradient [B,n][, grad map [B,n,d]])``.

    ``with_gradient=False``: only the forward pass, no partial backward; the gradient score is 0.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not with_gradient:
        return _context_scores(model, input_ids, attention_mask)
    labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    with frozen(model), capture_context_scores(model, attention_mask) as ctx, leaf_at_layer(model, layers_back) as leaf, capture_final_hidden(model) as final:
        with torch.enable_grad():
            _forward_without_logits(model, input_ids, attention_mask)
            grad_final = per_example_loss_grad(model, final["hidden"], labels)
            (grad,) = torch.autograd.grad(final["hidden"], leaf["hidden"], grad_outputs=grad_final)
    real = attention_mask.bool()
    context = ctx.scores.masked_fill(~real, 0.0)
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    gradient = reduce_gradient(grad, grad_mode).masked_fill(~real, 0.0)
    if return_grad_map:
        return context, gradient, grad.masked_fill(~real[..., None], 0.0)
    return context, gradient


def _forward_without_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """The scoring forward: hooks read what they need; the LM head computes no logits."""
    kwargs = {"logits_to_keep": torch.zeros(0, dtype=torch.long, device=input_ids.device)}
    # Positions count real tokens only, so left- and right-padded batches score alike.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs)


def _context_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """``(context, zeros)``: the attention each token receives, from one forward without grad."""
    with torch.no_grad(), capture_context_scores(model, attention_mask) as ctx:
        _forward_without_logits(model, input_ids, attention_mask)
    context = ctx.scores.masked_fill(~attention_mask.bool(), 0.0)
    return context, torch.zeros_like(context)


def seek(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    ratio: float = DEFAULT_RATIO,
    strategy: str = "tokenseek",
    *,
    layers_back: int = 1,
    grad_mode: str = "abs",
    seed: int = 0,
    select_from: str = DEFAULT_SELECT_FROM,
    with_gradient: bool = True,
) -> SeekResult:
    """Score every token and choose the kept ones (keep mask feeds :func:`tokenseek.ditched_loss`).

    Padding may be on either side: real tokens are found through ``attention_mask``.
    ``select_from="targets"`` keeps only positions whose next token has a label;
    ``"targets-first"`` keeps those first and fills the rest of the budget from the others.
    ``alpha``/``beta`` left None take the default for ``select_from``.
    ``with_gradient=False`` skips the partial backward (``gradient`` is 0), as ``tokenseek train``
    scores when its selection never reads the gradient score.
    """
    alpha, beta = score_weights(select_from, alpha, beta)
    if not with_gradient and reads_gradient(strategy, alpha, beta):
        raise TokenSeekError(
            f"selection {strategy!r} with alpha,beta = {alpha:g},{beta:g} ranks by the gradient score: "
            "call seek with with_gradient=True (or beta=0)"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with eval_mode(model):  # scoring is a measurement: no dropout
        context, gradient = score_batch(
            model, input_ids, labels, attention_mask, layers_back=layers_back, grad_mode=grad_mode, with_gradient=with_gradient
        )
    keep = torch.zeros_like(attention_mask, dtype=torch.bool)
    combined = torch.full(context.shape, float("-inf"))
    for b in range(input_ids.shape[0]):
        where = attention_mask[b].bool().nonzero(as_tuple=True)[0].cpu()
        ctx_b, grad_b = context[b, where].cpu().numpy(), gradient[b, where].cpu().numpy()
        pool = candidate_positions(labels[b, where].cpu().numpy(), select_from)
        chosen = select_keep(len(where), ratio, strategy, context=ctx_b, gradient=grad_b, alpha=alpha, beta=beta, seed=seed, index=b, **pool)
        keep[b, where[torch.from_numpy(chosen)].to(keep.device)] = True
        if len(where):
            combined[b, where] = torch.from_numpy(combined_score(ctx_b, grad_b, alpha, beta)).float()
    return SeekResult(context=context, gradient=gradient, combined=combined, keep=keep)


__all__ = ["SeekResult", "score_batch", "seek"]
