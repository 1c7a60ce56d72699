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


def check_stored_keep(trainer, ratio):
    """Each row of the first training batch keeps what the stored scores of that example say."""
    from tokenseek.seeking.select import keep_for_labels
    from tokenseek.train.selection import example_key

    batch = next(iter(trainer.get_train_dataloader()))
    store, index_of = trainer.offline_keep.scores, trainer.offline_keep.index_of
    for row in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][row].bool()
        ids, labels = batch["input_ids"][row][real], batch["labels"][row][real]
        expected = keep_for_labels(labels.numpy(), ratio, "tokenseek", stored=store.get(index_of[example_key(ids, labels)]))
        assert batch["keep"][row][real].tolist() == expected.tolist()
