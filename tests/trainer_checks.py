"""Checks shared by the trainer tests (plain Trainer and TRL): the loss each training micro-batch
got, against the independent ditched loss of its keep mask; and what a keep mask may contain."""

from __future__ import annotations

import torch

from tokenseek import ditched_loss
from tokenseek.seeking.select import target_positions


def spy_on_loss(trainer, monkeypatch):
    """Record, for every training micro-batch, the trainer's batch, its loss, the reference, and
    how many two-pass ditched forwards the trainer ran (the loss value alone cannot tell: a full
    forward scored at the kept positions gives the same number, without saving any memory)."""
    import tokenseek.ditching.loss as loss_module

    seen, compute_loss, forwards = [], trainer.compute_loss, []
    ditched_forward = loss_module.ditched_forward
    monkeypatch.setattr(loss_module, "ditched_forward", lambda *a, **k: forwards.append(1) or ditched_forward(*a, **k))

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        before = len(forwards)
        loss = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        ran = len(forwards) - before
        with torch.no_grad():
            reference = ditched_loss(model, inputs["input_ids"], inputs["labels"], inputs["keep"], inputs["attention_mask"])
        seen.append({"inputs": inputs, "loss": loss.detach(), "reference": reference, "num_items": num_items_in_batch, "ditched_forwards": ran})
        return loss

    trainer.compute_loss = spy
    return seen


def check_keep(inputs, ratio):
    for row in range(inputs["input_ids"].shape[0]):
        real = inputs["attention_mask"][row].bool()
        keep, labels = inputs["keep"][row][real], inputs["labels"][row][real]
        targets = torch.from_numpy(target_positions(labels.numpy()))
        assert not (keep & ~targets).any(), "a kept position has no training target"
        assert int(keep.sum()) == min(int(-(-ratio * int(real.sum()) // 1)), int(targets.sum()))
    assert not inputs["keep"][~inputs["attention_mask"].bool()].any()
