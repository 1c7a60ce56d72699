"""TRL's ``SFTTrainer`` with token ditching.

TRL tokenises the dataset and builds ``labels`` (-100 outside ``completion_mask`` /
``assistant_masks``) and its collator pads them; this module only adds a keep mask to each
collated batch and replaces the training loss with the ditched loss::

    from tokenseek.integrations.trl import TokenSeekSFTTrainer
    trainer = TokenSeekSFTTrainer(model=..., args=SFTConfig(...), train_dataset=..., ratio=0.1)

Selection: ``"random"`` (TokenTune), or a scored strategy (``"tokenseek"`` ...) from a score
store made offline over TRL's own tokenised examples (``scores=DIR``: scored on first use,
reused while model and data match). Online selection plugs in as ``keep_fn(model, batch)``.
Evaluation keeps TRL's own full-token loss.
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
from tokenseek.seeking.select import SCORED, check_selection, keep_for_labels
from tokenseek.train.trainer import ditched_step_loss

try:
    from trl import SFTTrainer
except ImportError as exc:  # an optional extra
    raise ImportError("tokenseek.integrations.trl needs TRL: pip install 'tokenseek[trl]'") from exc

# Online selection: called in every training step with the current model and the collated
# batch (input_ids, attention_mask, labels); returns a bool keep mask [batch, seq].
KeepFn = Callable[[torch.nn.Module, dict], torch.Tensor]


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


class TokenSeekSFTTrainer(SFTTrainer):
    """``SFTTrainer`` that back-propagates only the kept tokens of each training example.

    Extra arguments: ``ratio`` (fraction of each example's tokens kept), ``selection``
    (``random`` or a scored strategy: ``tokenseek``, ``context``, ``gradient``, ``mixed``,
    ``probe``), ``select_from`` (``targets``: only positions with a training target;
    ``all``), ``alpha``/``beta`` (Eq. 5), ``scores`` (score store directory for scored
    selections), ``keep_fn`` (online selection, replaces the offline choice).
    """

    def __init__(
        self,
        *args,
        ratio: float = 0.1,
        selection: str = "random",
        select_from: str = "targets",
        alpha: float = 1.0,
        beta: float = 1.0,
        scores: str | Path | None = None,
        keep_fn: KeepFn | None = None,
        **kwargs,
    ):
        check_selection(selection, ratio, alpha, beta, select_from)
        if selection in SCORED and scores is None and keep_fn is None:
            raise TokenSeekError(f"selection={selection!r} needs token scores: pass scores=DIR (scored there on first use) or use selection='random'")
        super().__init__(*args, **kwargs)
        if self.args.gradient_checkpointing:
            # Checkpointed decoder layers drop the KV cache that the kept pass attends to.
            raise TokenSeekError(
                "token ditching does not work with gradient checkpointing yet: set activation_checkpointing=False "
                "in SFTConfig (gradient_checkpointing=False on older transformers; TRL turns it on by default)"
            )
        if self.padding_free:
            raise TokenSeekError("token ditching needs padded batches with an attention mask: set padding_free=False and packing=False in SFTConfig")
        # The Trainer then counts num_items_in_batch (from our shift_labels) for the loss.
        self.model_accepts_loss_kwargs = True
        self.keep_fn = keep_fn
        self.offline_keep = None
        if keep_fn is None:
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation is TRL's own full-token loss: no ditching outside training
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.keep_fn is not None:
            inputs = with_keep(inputs, self.keep_fn(model, inputs))
            # The Trainer counted every target, not the kept ones (unknown before the step), so
            # this loss is a per-micro-batch mean over kept targets.
            num_items_in_batch = None
        loss = ditched_step_loss(self, model, inputs, num_items_in_batch)
        return (loss, {"loss": loss}) if return_outputs else loss


__all__ = ["KeepingCollator", "OfflineKeep", "TokenSeekSFTTrainer", "example_key", "sft_examples"]
