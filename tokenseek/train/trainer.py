"""``TokenSeekTrainer``: transformers' Trainer with the ditched loss.

Everything else — accumulation, schedulers, checkpoints, resume, logging,
torchrun/accelerate data parallelism — is the stock Trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from tokenseek.ditching.loss import IGNORE_INDEX, ditched_loss_sum


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
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        keep, shift_labels = inputs["keep"], inputs["shift_labels"]
        if bool((keep == attention_mask.bool()).all()):
            # Every token kept: ordinary training, one pass, nothing to ditch.
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            total = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            count = (shift_labels != IGNORE_INDEX).sum()
        else:
            total, count = ditched_loss_sum(model, input_ids, shift_labels, keep, attention_mask)
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
