"""``TokenSeekTrainer``: transformers' Trainer with the ditched loss.

Everything else — accumulation, schedulers, checkpoints, resume, logging,
torchrun/accelerate data parallelism — is the stock Trainer.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from tokenseek.ditching.loss import kept_targets, step_loss_sum


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
        keep, shift_labels = inputs["keep"], inputs["shift_labels"]
        if not model.training:
            # Evaluation measures the ordinary full-token loss, whatever keep mask a batch carries.
            keep = inputs["attention_mask"].bool()
            shift_labels = kept_targets(inputs["labels"], keep)
            num_items_in_batch = None  # the batch's own token mean: nothing is accumulated
        total, count = step_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], shift_labels, keep)
        if num_items_in_batch is not None:
            self.loss_is_scaled_for_ga = True
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # DDP averages gradients over processes; the divisor already counted all of them.
                loss = loss * self.accelerator.num_processes
        else:
            self.loss_is_scaled_for_ga = False
            loss = total / count.clamp(min=1)
        return (loss, {"loss": loss}) if return_outputs else loss
