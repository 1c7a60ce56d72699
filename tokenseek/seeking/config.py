"""The options of ``tokenseek score`` that are its own (model, data and ratio options are TrainConfig's)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenseek.seeking.gradient import GRAD_MODES
from tokenseek.utils.options import check_options, option

GRAD_LAYERS = (1, 2, 3)  # the gradient at the input of layer N-1, N-2 or N-3


@dataclass
class ScoreConfig:
    batch_size: int = option(4, "examples scored per forward/backward pass", minimum=1)
    grad_layer: int = option(1, "score the gradient at the input of layer N-1 (1), N-2 (2) or N-3 (3)", choices=GRAD_LAYERS)
    grad_mode: str = option("abs", "sum |gradient| (abs) or the signed gradient over the hidden dimension", choices=GRAD_MODES)
    seed: int = option(0, "seed of the reference keep mask stored with the scores", minimum=0)

    def __post_init__(self) -> None:
        check_options(self)
