"""Online seeking: score and select inside the training step, with the current weights.

The ditched step already runs every token once without grad (the context pass). Online
seeking reads what it needs while that pass runs anyway, so there is no separate scoring
pass and no score store:

- context score: the last layer's attention columns, summed in query chunks by the same
  attention function offline scoring uses (no ``n x n`` map is kept);
- gradient score: the hidden state entering layer ``N - layers_back`` is recorded, and only
  the last ``layers_back`` layers, the final norm and the LM head (in position chunks) are
  run again with grad *with respect to that hidden state alone*: no parameter's ``.grad``
  is touched, and the cost is a fraction of one layer's forward and backward per layer.

At the same weights the scores equal offline :func:`tokenseek.seeking.seek.score_batch`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from tokenseek.ditching.forward import ContextCache, context_pass
from tokenseek.ditching.loss import IGNORE_INDEX
from tokenseek.errors import TokenSeekError, UnsupportedModelError
from tokenseek.models.introspect import capture_final_hidden, decoder, decoder_layers, eval_mode
from tokenseek.seeking.context import capture_context_scores
from tokenseek.seeking.gradient import per_example_loss_grad, reduce_gradient
from tokenseek.seeking.select import DEFAULT_RATIO, DEFAULT_SELECT_FROM, SCORE_WEIGHTS, candidate_positions, check_selection, ranking_needed, score_weights, select_keep

# Every name a decoder layer has taken its cache under (``cache`` from transformers 5.24).
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


@dataclass
class OnlineScores:
    context: torch.Tensor  # [B, n], 0 at padding
    gradient: torch.Tensor  # [B, n], 0 at padding


@contextlib.contextmanager
def _record_layer_inputs(model, layers_back: int) -> Iterator[dict]:
    """Record each of the last ``layers_back`` layers' call (args, kwargs), and the modules the
    decoder body runs after its last layer (the final norm), in call order."""
    layers = decoder_layers(model)
    if not 1 <= layers_back <= len(layers):
        raise ValueError(f"layers_back must be in 1..{len(layers)}")
    tail = list(layers)[len(layers) - layers_back :]
    found: dict = {"calls": [], "after_last": []}
    handles = []

    def on_layer(module, args, kwargs):
        found["calls"].append((module, args, kwargs))

    def on_child(module, args, output):
        if len(found["calls"]) == len(tail):  # the last layer has run: this child is part of the tail
            found["after_last"].append(module)

    for layer in tail:
        handles.append(layer.register_forward_pre_hook(on_layer, with_kwargs=True))
    for child in decoder(model).children():
        if child is not layers:
            handles.append(child.register_forward_hook(on_child))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def _replay_tail(found: dict, hidden: torch.Tensor) -> torch.Tensor:
    """Run the recorded last layers and final norm again from ``hidden`` (no cache)."""
    for module, args, kwargs in found["calls"]:
        kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        if args:
            out = module(hidden, *args[1:], **kwargs)
        else:
            out = module(**{**kwargs, "hidden_states": hidden})
        hidden = out[0] if isinstance(out, tuple) else out
    for module in found["after_last"]:
        hidden = module(hidden)
    return hidden


def online_scores(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    layers_back: int = 1,
    grad_mode: str = "abs",
    context: bool = True,
    gradient: bool = True,
) -> tuple[OnlineScores, ContextCache]:
    """Run the context pass, collecting the scores on the way; returns them and the frozen cache.

    ``context`` / ``gradient``: which scores the selection uses. One it gives no weight (the
    paper's α,β = 1,0 needs no gradient score) is not computed and comes back as zeros — for
    the gradient score that skips the LM head over every target, most of online seeking's cost.
    """
    real = attention_mask.bool()
    labels = labels.masked_fill(~real, IGNORE_INDEX)
    stack = contextlib.ExitStack()

    def observe():
        if context:
            state["ctx"] = stack.enter_context(capture_context_scores(model, attention_mask))
        if gradient:
            state["inputs"] = stack.enter_context(_record_layer_inputs(model, layers_back))
            state["final"] = stack.enter_context(capture_final_hidden(model))
        return stack

    state: dict = {}
    # Nothing to observe: the context pass may run in pieces (less memory), as offline.
    cache = context_pass(model, input_ids, attention_mask, observe=observe if context or gradient else None)
    zeros = torch.zeros(real.shape, dtype=torch.float32, device=input_ids.device)
    scores = OnlineScores(
        context=state["ctx"].scores.masked_fill(~real, 0.0) if context else zeros,
        gradient=_gradient_score(model, state, labels, layers_back, grad_mode).masked_fill(~real, 0.0) if gradient else zeros,
    )
    return scores, cache


def _gradient_score(model, state: dict, labels: torch.Tensor, layers_back: int, grad_mode: str) -> torch.Tensor:
    """|dL/dh| at the input of layer ``N - layers_back``, replayed from what the context pass recorded."""
    found, final = state["inputs"], state["final"]["hidden"]
    first_module, first_args, first_kwargs = found["calls"][0]
    start = first_args[0] if first_args else first_kwargs["hidden_states"]
    with eval_mode(model), torch.enable_grad():
        grad_final = per_example_loss_grad(model, final, labels)
        hidden = start.detach().requires_grad_(True)
        replayed = _replay_tail(found, hidden)
        if replayed.shape != final.shape or not torch.allclose(replayed, final, rtol=1e-3, atol=1e-3 * float(final.abs().max())):
            raise UnsupportedModelError(
                f"online seeking could not replay the last {layers_back} layer(s) of {type(model).__name__} "
                "(their output differs from the context pass): use --seeking offline"
            )
        # Only d(loss)/d(hidden): the parameters' .grad stay exactly as the kept pass leaves them.
        (grad,) = torch.autograd.grad(replayed, hidden, grad_outputs=grad_final)
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    return reduce_gradient(grad, grad_mode)


@dataclass
class OnlineSeeker:
    """Select the kept tokens of each batch inside the training step (``--seeking online``)."""

    ratio: float = DEFAULT_RATIO
    strategy: str = "tokenseek"
    alpha: float | None = None  # None: the default for select_from (select.DEFAULT_WEIGHTS)
    beta: float | None = None
    select_from: str = DEFAULT_SELECT_FROM
    layers_back: int = 1
    grad_mode: str = "abs"
    seed: int = 0

    def __post_init__(self):
        self.alpha, self.beta = score_weights(self.select_from, self.alpha, self.beta)
        check_selection(self.strategy, self.ratio, self.alpha, self.beta, self.select_from)
        if self.strategy in ("full", "probe"):
            raise TokenSeekError(f"--seeking online selects a ratio of tokens; --selection {self.strategy} has nothing to seek online")

    def __call__(
        self, model, input_ids, labels, attention_mask, indices=None
    ) -> tuple[torch.Tensor, ContextCache | None, OnlineScores | None]:
        """``(keep [B, n] bool, frozen context cache, scores)`` for one padded batch.

        When no example's budget leaves a choice (it covers all its candidates) nothing is
        scored: the keep mask is every candidate, and cache and scores are None (the step then
        runs its own context pass).
        """
        real, label_rows = attention_mask.bool().cpu().numpy(), labels.cpu().numpy()
        if not any(ranking_needed(label_rows[b, real[b]], self.ratio, self.select_from) for b in range(input_ids.shape[0])):
            keep = torch.zeros_like(attention_mask, dtype=torch.bool)
            for b in range(input_ids.shape[0]):
                where = np.flatnonzero(real[b])
                # No choice anywhere: select_keep's masks need no scores.
                chosen = select_keep(len(where), self.ratio, self.strategy, **candidate_positions(label_rows[b, where], self.select_from))
                keep[b, torch.from_numpy(where[chosen]).to(keep.device)] = True
            return keep, None, None
        alpha, beta = SCORE_WEIGHTS.get(self.strategy, (self.alpha, self.beta))
        scores, cache = online_scores(
            model, input_ids, labels, attention_mask, layers_back=self.layers_back, grad_mode=self.grad_mode,
            context=alpha != 0, gradient=beta != 0,
        )
        keep = torch.zeros_like(attention_mask, dtype=torch.bool)
        context, gradient = scores.context.cpu().numpy(), scores.gradient.cpu().numpy()
        for b in range(input_ids.shape[0]):
            where = np.flatnonzero(real[b])
            chosen = select_keep(
                len(where),
                self.ratio,
                self.strategy,
                context=context[b, where],
                gradient=gradient[b, where],
                alpha=self.alpha,
                beta=self.beta,
                seed=self.seed,
                index=int(indices[b]) if indices is not None else b,
                **candidate_positions(label_rows[b, where], self.select_from),
            )
            keep[b, torch.from_numpy(where[chosen]).to(keep.device)] = True
        return keep, cache, scores

