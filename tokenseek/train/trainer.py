"""``TokenSeekTrainer``: transformers' Trainer with the ditched loss.

Everything else — accumulation, schedulers, checkpoints, resume, logging,
torchrun/accelerate data parallelism — is the stock Trainer.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from tokenseek.ditching.loss import step_loss_sum


class TokenSeekTrainer(Trainer):
    """Batches carry ``keep`` and ``shift_labels`` (see :class:`tokenseek.data.DitchingCollator`).

    The loss is summed over kept targets and divided by ``num_items_in_batch``, which
    the Trainer counts from ``shift_labels`` over the whole accumulation window and
    all processes: accumulation and DDP then equal one big batch exactly.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Makes the Trainer count num_items_in_batch for our own loss.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = ditched_step_loss(self, model, inputs, num_items_in_batch)
        return (loss, {"loss": loss}) if return_outputs else loss


def ditched_step_loss(trainer: Trainer, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """The ditched loss of one micro-batch (``keep`` and ``shift_labels`` in ``inputs``), scaled
    the way ``trainer`` (any transformers Trainer, TRL's included) accumulates it."""
    total, count = step_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], inputs["shift_labels"], inputs["keep"])
    if num_items_in_batch is not None:
        trainer.loss_is_scaled_for_ga = True
        loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
        if trainer.args.average_tokens_across_devices and trainer.accelerator.num_processes > 1:
            # DDP averages gradients over processes; the divisor already counted all of them.
            loss = loss * trainer.accelerator.num_processes
        return loss
    trainer.loss_is_scaled_for_ga = False
    return total / count.clamp(min=1)
