"""Token ditching: back-propagate only the kept tokens of each example (paper §3.2.2, S2)."""

from tokenseek.ditching.forward import ContextCache, DitchedOutput, context_pass, ditched_forward, kept_pass
from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK, LossSums, ditched_loss, kept_targets, step_loss_sums

__all__ = [
    "DEFAULT_LOSS_CHUNK",
    "ContextCache",
    "DitchedOutput",
    "LossSums",
    "context_pass",
    "ditched_forward",
    "ditched_loss",
    "kept_pass",
    "kept_targets",
    "step_loss_sums",
]
