"""Pad a list of examples into a training batch with a keep mask."""

from __future__ import annotations

import torch

from tokenseek.constants import IGNORE_INDEX
from tokenseek.ditching.loss import kept_targets


class DitchingCollator:
    """Right-pads ``input_ids``/``labels``/``keep`` and adds ``shift_labels``.

    ``shift_labels`` holds the next-token target of every *kept* position (-100
    elsewhere). transformers' Trainer counts it to normalise the loss over a whole
    accumulation window (and across processes), so accumulation matches a big batch.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)

        def pad(key, value, dtype):
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features], dtype=dtype)

        input_ids = pad("input_ids", self.pad_token_id, torch.long)
        labels = pad("labels", IGNORE_INDEX, torch.long)
        attention_mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        if "keep" in features[0]:
            keep = pad("keep", False, torch.bool)
        else:  # no selection: every token is kept (ordinary training)
            keep = attention_mask.bool()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "index" in features[0]:  # seeds each example's random choices (online seeking)
            batch["index"] = torch.tensor([f["index"] for f in features])
        return with_keep(batch, keep)


def with_keep(batch: dict, keep: torch.Tensor) -> dict:
    """``batch`` (padded, with ``labels`` and ``attention_mask``) plus ``keep`` and its ``shift_labels``.

    The Trainer counts ``shift_labels`` to normalise over the accumulation window, so they
    must be the targets of kept positions only; padding is never kept.
    """
    keep = keep.bool() & batch["attention_mask"].bool()
    return {**batch, "keep": keep, "shift_labels": kept_targets(batch["labels"], keep)}
