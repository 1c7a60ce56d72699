"""TRL's ``SFTTrainer`` with token ditching.

TRL tokenises the dataset and builds ``labels`` (-100 outside ``completion_mask`` /
``assistant_masks``) and its collator pads them; this module only adds a keep mask to each
collated batch and replaces the training loss with the ditched loss::

    from tokenseek.integrations.trl import TokenSeekSFTTrainer
    trainer = TokenSeekSFTTrainer(model=..., args=SFTConfig(...), train_dataset=..., ratio=0.1)

Selection: ``"random"`` (TokenTune), or a scored strategy (``"tokenseek"`` ...) either from a
score store made offline over TRL's own tokenised examples (``scores=DIR``: scored on first
use, reused while model and data match) or online, inside each step with the current weights
(``seeking="online"``). Evaluation keeps TRL's own full-token loss. Gradient checkpointing
(TRL's default) works: the kept pass reads a frozen context cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tokenseek.data.collate import with_keep
from tokenseek.data.tokenize import TokenizedData, tokenizer_fingerprint
from tokenseek.errors import TokenSeekError
from tokenseek.seeking.select import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_RATIO, DEFAULT_SELECT_FROM, SCORED, check_selection, keep_for_labels
from tokenseek.seeking.online import OnlineSeeker
from tokenseek.train.trainer import DitchedLossMixin, StepOptions

try:
    from trl import SFTTrainer
except ImportError as exc:  # an optional extra
    raise ImportError("tokenseek.integrations.trl needs TRL: pip install 'tokenseek[trl]'") from exc



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
    """Wraps TRL's collator: its batch plus ``keep`` and the kept targets (``shift_labels``).

    The keep mask is chosen here, before the step, because the Trainer counts ``shift_labels``
    over the whole accumulation window to normalise the loss (as for ``TokenSeekTrainer``).
    """

    def __init__(self, collator, select: Callable[[dict], torch.Tensor]):
        self.collator, self.select = collator, select

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        if "attention_mask" not in batch:
            raise TokenSeekError("token ditching needs padded batches with an attention mask: set padding_free=False and packing=False in SFTConfig")
        return with_keep(batch, self.select(batch))


def sft_examples(dataset, tokenizer, max_length: int | None) -> TokenizedData:
    """TRL's tokenised train dataset (input_ids, labels) as tokenseek examples, for scoring."""
    if not hasattr(dataset, "__len__"):
        raise TokenSeekError("scored selection needs a map-style train_dataset (an IterableDataset cannot be scored ahead): use selection='random'")
    examples = [{"index": i, "input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for i, row in enumerate(dataset)]
    settings = {"source": "trl", "max_length": max_length, "tokenizer_sha": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer)}
    return TokenizedData(examples, settings=settings)


class TokenSeekSFTTrainer(DitchedLossMixin, SFTTrainer):
    """``SFTTrainer`` that back-propagates only the kept tokens of each training example.

    Extra arguments: ``ratio`` (fraction of each example's tokens kept), ``selection``
    (``random`` or a scored strategy: ``tokenseek``, ``context``, ``gradient``, ``mixed``,
    ``probe``), ``select_from`` (``targets``: only positions with a training target;
    ``all``), ``alpha``/``beta`` (Eq. 5), ``scores`` (score store directory for offline scored
    selections), ``seeking`` (``offline`` or ``online``: score inside each step, no store),
    ``loss_norm`` (``token`` or ``example``), ``loss_chunk`` (LM-head rows at a time).
    """

    def __init__(
        self,
        *args,
        ratio: float = DEFAULT_RATIO,
        selection: str = "random",
        select_from: str = DEFAULT_SELECT_FROM,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        scores: str | Path | None = None,
        seeking: str = "offline",
        loss_norm: str = "token",
        loss_chunk: int | None = None,
        **kwargs,
    ):
        check_selection(selection, ratio, alpha, beta, select_from)
        if seeking not in ("offline", "online"):
            raise TokenSeekError(f"seeking must be 'offline' or 'online', got {seeking!r}")
        online = seeking == "online"
        if selection in SCORED and scores is None and not online:
            raise TokenSeekError(
                f"selection={selection!r} needs token scores: pass scores=DIR (scored there on first use), seeking='online', or selection='random'"
            )
        super().__init__(*args, **kwargs)
        step = StepOptions(loss_norm=loss_norm) if loss_chunk is None else StepOptions(loss_norm=loss_norm, loss_chunk=loss_chunk)
        if online:
            step.online = OnlineSeeker(ratio=ratio, strategy=selection, alpha=alpha, beta=beta, select_from=select_from, seed=self.args.seed)
        self._init_ditching(step)
        if self.padding_free:
            raise TokenSeekError("token ditching needs padded batches with an attention mask: set padding_free=False and packing=False in SFTConfig")
        self.offline_keep = None
        if not online:
            self.offline_keep = OfflineKeep(ratio, selection, select_from=select_from, alpha=alpha, beta=beta, seed=self.args.seed)
            if selection in SCORED:
                self.offline_keep.scores, self.offline_keep.index_of = self._score(scores)

    def get_train_dataloader(self):
        # Only training batches get a keep mask; evaluation batches are collated as TRL does.
        if self.offline_keep is None:
            return super().get_train_dataloader()
        collator = self.data_collator
        self.data_collator = KeepingCollator(collator, self.offline_keep)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def _score(self, out):
        """Score TRL's tokenised train set into ``out`` (or open it); returns (store, index by content)."""
        from tokenseek.seeking.store import score_dataset

        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        data = sft_examples(self.train_dataset, tokenizer, self.args.max_length)
        store = score_dataset(
            self.model, tokenizer, data, out, batch_size=self.args.per_device_train_batch_size,
            # Under torchrun/accelerate each process scores its share; rank 0 merges the store.
            rank=self.args.process_index, world_size=self.args.world_size,
        )
        return store, {example_key(ex["input_ids"], ex["labels"]): ex["index"] for ex in data.examples}


__all__ = ["KeepingCollator", "OfflineKeep", "TokenSeekSFTTrainer", "example_key", "sft_examples"]
