"""Keep masks for a trainer's own collated batches: what ``TokenSeekTrainer(ratio=...)`` and
TRL's ``TokenSeekSFTTrainer`` share.

A user's trainer tokenises and collates as it always does; the keep mask is added to each
collated training batch (random, or from a score store, found by the example's content since
batches carry no record index) or chosen inside each step (online seeking).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenseek.data.collate import with_keep
from tokenseek.data.tokenize import TokenizedData, tokenizer_fingerprint
from tokenseek.ditching.loss import LOSS_NORMS
from tokenseek.errors import TokenSeekError
from tokenseek.utils.options import ignored
from tokenseek.seeking.select import (
    DEFAULT_RATIO,
    DEFAULT_SELECT_FROM,
    SCORED,
    SEEKING,
    check_selection,
    keep_for_labels,
    unread_settings,
)

logger = logging.getLogger(__name__)


@dataclass
class SelectionOptions:
    """The keyword arguments a trainer takes to choose kept tokens itself.

    ``ratio``: fraction of each example's tokens kept. ``selection``: ``random`` (TokenTune) or
    a scored strategy (``tokenseek``, ``context``, ``gradient``, ``mixed``, ``probe``).
    ``select_from``: ``targets`` (only positions with a training target), ``all``, or
    ``targets-first`` (every target, then the rest of the budget from the other positions).
    ``alpha``/``beta``: Eq. 5's weights. ``scores``: score store directory for offline scored
    selections (scored there on first use, reused while model and data match). ``seeking``:
    ``offline`` or ``online`` (score inside each step with the current weights, no store).
    ``loss_norm``: ``token`` or ``example``. ``loss_chunk``: LM-head rows at a time.
    ``context_chunk``: tokens per call of the no-grad context pass (None: the device's default).
    """

    ratio: float = DEFAULT_RATIO
    selection: str = "random"
    select_from: str = DEFAULT_SELECT_FROM
    alpha: float | None = None  # None: the default for select_from (seeking.select.DEFAULT_WEIGHTS)
    beta: float | None = None
    scores: str | Path | None = None
    seeking: str = "offline"
    loss_norm: str = "token"
    loss_chunk: int | None = None
    context_chunk: int | None = None

    def __post_init__(self) -> None:
        check_selection(self.selection, self.ratio, self.alpha, self.beta, self.select_from)
        if self.seeking not in SEEKING:
            raise TokenSeekError(f"seeking must be 'offline' or 'online', got {self.seeking!r}")
        if self.loss_norm not in LOSS_NORMS:
            raise TokenSeekError(f"loss_norm must be one of {', '.join(LOSS_NORMS)}, got {self.loss_norm!r}")
        if self.scores is not None and (self.selection not in SCORED or self.seeking == "online"):
            raise TokenSeekError(
                f"scores= is read by offline scored selections only, not selection={self.selection!r} with seeking={self.seeking!r}: drop scores"
            )
        if self.selection in SCORED and self.scores is None and self.seeking == "offline":
            raise TokenSeekError(
                f"selection={self.selection!r} needs token scores: pass scores=DIR (scored there on first use), "
                "seeking='online', or selection='random'"
            )
        for line in self.ignored_options():
            logger.warning(line)

    def ignored_options(self) -> list[str]:
        """One line for each keyword set away from its default that this selection never reads."""
        return ignored(self, unread_settings(self.selection, self.ratio), keywords=True)

    @classmethod
    def pop_from(cls, kwargs: dict) -> SelectionOptions | None:
        """The options among a trainer's keyword arguments (removed from ``kwargs``), or None if none was given."""
        given = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls) if f.name in kwargs}
        return cls(**given) if given else None


def example_key(input_ids, labels) -> str:
    """Identifies a tokenised example by its content (batches carry no record index)."""
    digest = hashlib.sha256(np.asarray(input_ids, np.int64).tobytes())
    digest.update(np.asarray(labels, np.int64).tobytes())
    return digest.hexdigest()[:16]


class OfflineKeep:
    """Keep masks for collated batches, chosen without the model: random, or from stored scores.

    An example keeps the same tokens every epoch: random selection is seeded by the
    example's content, stored scores are found by it.
    """

    def __init__(self, ratio: float, strategy: str, *, select_from: str, alpha: float, beta: float, seed: int, scores=None, index_of: dict | None = None):
        self.ratio, self.strategy, self.select_from = ratio, strategy, select_from
        self.alpha, self.beta, self.seed = alpha, beta, seed
        self.scores, self.index_of = scores, index_of or {}

    def __call__(self, batch: dict) -> torch.Tensor:
        keep = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
        for row in range(keep.shape[0]):
            real = batch["attention_mask"][row].bool()  # any padding side
            keep[row, real] = torch.from_numpy(self._example(batch["input_ids"][row][real], batch["labels"][row][real]))
        return keep

    def _example(self, input_ids: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        key = example_key(input_ids.cpu(), labels.cpu())
        stored, index = None, int(key[:8], 16)
        if self.scores is not None:
            if key not in self.index_of:
                raise TokenSeekError(f"a training example is not in the score store {self.scores.path}: delete the store to re-score this dataset")
            index = self.index_of[key]
            stored = self.scores.get(index)
        return keep_for_labels(
            labels.cpu().numpy(), self.ratio, self.strategy, select_from=self.select_from, stored=stored,
            alpha=self.alpha, beta=self.beta, seed=self.seed, index=index,
        )


class KeepingCollator:
    """Wraps a trainer's collator: its batch plus ``keep`` and the kept targets (``shift_labels``).

    The keep mask is chosen here, before the step, because the Trainer counts ``shift_labels``
    over the whole accumulation window to normalise the loss.
    """

    def __init__(self, collator, select: Callable[[dict], torch.Tensor]):
        self.collator, self.select = collator, select

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        if "attention_mask" not in batch or "labels" not in batch:
            raise TokenSeekError(
                "token ditching needs padded batches with input_ids, attention_mask and labels: "
                "tokenise with labels (-100 where there is no loss) and no padding-free / packed batches"
            )
        return with_keep(batch, self.select(batch))


def tokenized_examples(dataset, tokenizer, max_length: int | None, source: str) -> TokenizedData:
    """A trainer's tokenised train dataset (``input_ids``, ``labels``) as tokenseek examples, for scoring."""
    if not hasattr(dataset, "__len__"):
        raise TokenSeekError("scored selection needs a map-style train_dataset (an IterableDataset cannot be scored ahead): use selection='random'")
    examples = [{"index": i, "input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for i, row in enumerate(dataset)]
    settings = {"source": source, "max_length": max_length, "tokenizer_sha": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer)}
    return TokenizedData(examples, settings=settings)
