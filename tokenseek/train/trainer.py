"""``TokenSeekTrainer``: transformers' Trainer with the ditched loss.

Everything else — accumulation, schedulers, checkpoints, resume, logging, gradient
checkpointing, torchrun/accelerate data parallelism — is the stock Trainer.

How the loss is normalised (``loss_norm``):

- ``token`` (default): the summed cross-entropy over kept targets, divided by the number of
  kept targets in the whole accumulation window on all processes — one big batch's token mean.
- ``example``: each example's mean over its kept targets (TokenTune's rule), averaged over
  the examples of the window on all processes. An example with no kept target adds 0.

With online seeking and ``select_from="all"`` the number of kept targets is only known
inside each step, so ``token`` then falls back to each micro-batch's own token mean,
averaged over the window (transformers' rule when it cannot count items in advance).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import Trainer

from tokenseek.constants import IGNORE_INDEX
from tokenseek.data.collate import DitchingCollator
from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK, LOSS_NORMS, kept_targets, step_loss_sums
from tokenseek.errors import TokenSeekError
from tokenseek.seeking.online import OnlineSeeker
from tokenseek.seeking.select import (
    NOTHING_TO_RANK,
    SCORED,
    KeptSetDrift,
    SelectionTally,
    keep_count,
    reads_gradient,
    score_weights,
    scores_needed,
)
from tokenseek.train.selection import KeepingCollator, OfflineKeep, SelectionOptions, example_key, tokenized_examples

logger = logging.getLogger(__name__)


@dataclass
class StepOptions:
    """How each training step runs (defaults: today's offline selection, token mean, chunked head)."""

    loss_norm: str = "token"
    loss_chunk: int = DEFAULT_LOSS_CHUNK
    context_chunk: int | None = None  # tokens per context-pass call; None: the device's default
    online: OnlineSeeker | None = None  # set: select inside each step with the current weights


class DitchedLossMixin:
    """The ditched training loss for any transformers ``Trainer`` (TRL's ``SFTTrainer`` included).

    Training batches carry ``keep`` and ``shift_labels`` (see :func:`tokenseek.data.collate.with_keep`),
    or, with ``step.online`` set, ``keep`` is chosen inside each step and ``shift_labels`` is
    rebuilt from it. A batch without ``keep`` outside online training (e.g. TRL's evaluation
    batches) gets the parent trainer's own loss.
    """

    def _init_ditching(self, step: StepOptions | None) -> None:
        self.step_options = step or StepOptions()
        if self.step_options.loss_norm not in LOSS_NORMS:
            raise ValueError(f"loss_norm must be one of {LOSS_NORMS}, got {self.step_options.loss_norm!r}")
        # Makes the Trainer pass num_items_in_batch (counted by get_batch_samples) to compute_loss.
        self.model_accepts_loss_kwargs = True
        # Online selection over all positions: how many kept targets is unknown in advance.
        online = self.step_options.online
        self._count_in_advance = online is None or online.select_from != "all" or self.step_options.loss_norm == "example"
        self.online_tally = SelectionTally()  # what online selection kept, over every visit
        self.online_drift = KeptSetDrift()  # each example's kept set at its first and last visit

    # ------------------------------------------------------------------ the step
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        options = self.step_options
        if not model.training and "keep" in inputs:
            # Evaluation measures the ordinary full-token loss, whatever keep mask a batch carries.
            keep = inputs["attention_mask"].bool()
            inputs = {**inputs, "keep": keep, "shift_labels": kept_targets(inputs["labels"], keep)}
            num_items_in_batch = None  # the batch's own token mean: nothing is accumulated
        online = options.online is not None and model.training
        if not online and "keep" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        keep, cache, shift_labels = inputs.get("keep"), None, inputs.get("shift_labels")
        if online:
            keep, cache, _ = options.online(model, inputs["input_ids"], inputs["labels"], inputs["attention_mask"], inputs.get("index"))
            shift_labels = kept_targets(inputs["labels"], keep)
            self._tally(keep, inputs)
        sums = step_loss_sums(
            model, inputs["input_ids"], inputs["attention_mask"], shift_labels, keep, cache=cache,
            loss_chunk=options.loss_chunk, context_chunk=options.context_chunk,
        )
        loss = self._normalised(sums, num_items_in_batch if model.training else None)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _normalised(self, sums, num_items_in_batch) -> torch.Tensor:
        """The step's summed loss divided as ``--loss-norm`` says (see the module docstring)."""
        options = self.step_options
        total = sums.example_means().sum() if options.loss_norm == "example" else sums.total.sum()
        if num_items_in_batch is not None and self._count_in_advance:
            # The divisor covers the whole accumulation window (and every process): Trainer must not rescale.
            self.loss_is_scaled_for_ga = True
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # DDP averages gradients over processes; the divisor already counted all of them.
                loss = loss * self.accelerator.num_processes
            return loss
        self.loss_is_scaled_for_ga = False
        divisor = sums.count.sum() if options.loss_norm == "token" else torch.tensor(len(sums.count))
        return total / divisor.clamp(min=1).to(total.device)

    def _tally(self, keep, inputs) -> None:
        real = inputs["attention_mask"].bool().cpu()
        indices = inputs["index"].tolist() if "index" in inputs else [None] * len(real)
        for row_keep, row_labels, row_real, index in zip(keep.cpu(), inputs["labels"].cpu(), real, indices):
            self.online_tally.add(row_keep[row_real].numpy(), row_labels[row_real].numpy())
            if index is not None:
                self.online_drift.add(index, row_keep[row_real].numpy())

    # ------------------------------------------------------------------ normalisation
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The window's batches and the divisor of its summed loss (see the module docstring)."""
        batches, counted = super().get_batch_samples(epoch_iterator, num_batches, device)
        if counted is None or not batches:
            return batches, counted
        local = sum(self._items(batch) for batch in batches)
        local = torch.as_tensor(local, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            local = self.accelerator.gather(local).sum()
        return batches, local

    def _items(self, batch) -> int:
        options = self.step_options
        if options.loss_norm == "example":
            return len(batch["input_ids"])
        if options.online is None:
            return int((batch["shift_labels"] != IGNORE_INDEX).sum())
        # Online, targets or targets-first: min(budget, targets) of the targets are kept, so the count follows from lengths.
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        targets = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
        return sum(min(keep_count(n, options.online.ratio), t) for n, t in zip(lengths, targets))


class SelectingMixin(DitchedLossMixin):
    """A trainer that chooses the kept tokens itself (:class:`SelectionOptions`): a keep mask
    added to each collated training batch, or chosen inside each step (online seeking)."""

    def _init_selection(self, options: SelectionOptions, *, max_length: int | None, source: str) -> None:
        step = StepOptions(loss_norm=options.loss_norm, context_chunk=options.context_chunk)
        if options.loss_chunk is not None:
            step.loss_chunk = options.loss_chunk
        online = options.seeking == "online"
        if online:
            step.online = OnlineSeeker(
                ratio=options.ratio, strategy=options.selection, alpha=options.alpha, beta=options.beta,
                select_from=options.select_from, seed=self.args.seed,
            )
        self._init_ditching(step)
        self.offline_keep = None
        if not online:
            self.offline_keep = OfflineKeep(
                options.ratio, options.selection, select_from=options.select_from, alpha=options.alpha, beta=options.beta, seed=self.args.seed
            )
            if options.selection in SCORED:
                self.offline_keep.scores, self.offline_keep.index_of = self._score(options, max_length, source)

    def get_train_dataloader(self):
        # Only training batches get a keep mask; evaluation batches are collated as the trainer does.
        if getattr(self, "offline_keep", None) is None:
            return super().get_train_dataloader()
        collator = self.data_collator
        self.data_collator = KeepingCollator(collator, self.offline_keep)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def _score(self, options: SelectionOptions, max_length: int | None, source: str):
        """Score the tokenised train set into ``options.scores`` (or open it); returns (store, index by content).

        ``(None, {})`` when no example's budget leaves a choice: nothing to rank, nothing to score.
        """
        from tokenseek.seeking.store import score_dataset

        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        if tokenizer is None:
            raise TokenSeekError("scored selection needs the tokenizer: pass processing_class=tokenizer")
        data = tokenized_examples(self.train_dataset, tokenizer, max_length, source)
        if not scores_needed((ex["labels"] for ex in data.examples), options.ratio, options.selection, options.select_from):
            logger.info(NOTHING_TO_RANK)
            return None, {}
        # A store named here may serve other weights later: it keeps the gradient scores too.
        store = score_dataset(
            self.model, tokenizer, data, options.scores, batch_size=self.args.per_device_train_batch_size,
            # Under torchrun/accelerate each process scores its share; rank 0 merges the store.
            rank=self.args.process_index, world_size=self.args.world_size,
        )
        if reads_gradient(options.selection, *score_weights(options.select_from, options.alpha, options.beta)):
            store.require_gradient(f"selection={options.selection!r} with beta={options.beta}")
        return store, {example_key(ex["input_ids"], ex["labels"]): ex["index"] for ex in data.examples}


class TokenSeekTrainer(SelectingMixin, Trainer):
    """transformers' ``Trainer`` that back-propagates only the kept tokens of each example.

    As a drop-in: a train dataset of tokenised examples (``input_ids``, ``labels`` with -100
    where there is no loss) and the selection keywords of :class:`SelectionOptions`
    (``ratio=0.1, selection="random"`` or ``"tokenseek"`` with ``scores=DIR`` or
    ``seeking="online"`` …); batches are padded by :class:`tokenseek.data.DitchingCollator`
    unless a ``data_collator`` is given. Without selection keywords the batches bring their
    own ``keep`` column (``tokenseek train``'s way) and ``step`` says how the step runs.
    """

    def __init__(self, *args, step: StepOptions | None = None, **kwargs):
        options = SelectionOptions.pop_from(kwargs)
        if options is not None and step is not None:
            raise TokenSeekError("give either selection keywords (ratio=..., selection=...) or step=StepOptions(...), not both")
        if len(args) < 3 and kwargs.get("data_collator") is None:  # Trainer(model, args, data_collator, ...)
            kwargs["data_collator"] = DitchingCollator(_pad_token_id(kwargs.get("processing_class"), kwargs.get("model")))
        super().__init__(*args, **kwargs)
        if options is None:
            self._init_ditching(step)
        else:
            self._init_selection(options, max_length=None, source="trainer")


def _pad_token_id(processing_class, model) -> int:
    """The pad id for the default collator: the tokenizer's, else the model's, else EOS (as TRL does)."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    config = getattr(model, "config", None)
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None),
                      getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0  # padding is masked out of attention and loss, so any id works
