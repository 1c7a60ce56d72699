"""Token ditching: back-propagate only the kept tokens of each example (paper §3.2.2, S2)."""

from tokenseek.ditching.forward import DitchedOutput, ditched_forward
from tokenseek.ditching.loss import ditched_loss, kept_targets

__all__ = ["DitchedOutput", "ditched_forward", "ditched_loss", "kept_targets"]
