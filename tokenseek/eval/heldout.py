"""Held-out loss: mean cross-entropy over response tokens, as training measures it."""

from __future__ import annotations

import math

import torch

from tokenseek.data import tokenize_records
from tokenseek.data.templates import DEFAULT_TEMPLATE
from tokenseek.data.tokenize import DEFAULT_MAX_LENGTH
from tokenseek.constants import IGNORE_INDEX
from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK, full_loss_sums, kept_targets
from tokenseek.errors import UnsupportedModelError


@torch.no_grad()
def heldout_loss(
    model, tokenizer, records: list[dict], template: str = DEFAULT_TEMPLATE, max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8, progress: bool = False
) -> dict:
    """Token-weighted mean loss over the response tokens of ``records`` and its perplexity.

    Every response token counts once, whichever example it is in (a per-example
    mean would over-weight short answers). Returns ``dict(loss, perplexity, tokens,
    examples)``; ``examples`` excludes records with no response token left after
    truncation to ``max_length``. ``progress``: a bar over the batches (on stderr).
    """
    from tqdm.auto import tqdm

    from tokenseek.models.loading import disable_bnb_inference_repacking

    data = tokenize_records(records, tokenizer, template=template, max_length=max_length)
    # Similar lengths in a batch waste less compute on padding.
    examples = sorted(data.examples, key=lambda e: len(e["input_ids"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device

    was_training = model.training
    disable_bnb_inference_repacking(model)  # an eval forward must not corrupt later QLoRA training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in tqdm(range(0, len(examples), max(1, batch_size)), desc="held-out loss", unit="batch", disable=not progress):
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[row, :n] = torch.tensor(e["input_ids"])
                labels[row, :n] = torch.tensor(e["labels"])
                mask[row, :n] = 1
            sums = _loss_sums(model, ids.to(device), mask.to(device), kept_targets(labels, mask).to(device))
            total += float(sums.total.sum())
            count += int(sums.count.sum())
    finally:
        model.train(was_training)
    loss = total / count
    perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709
    return {"loss": loss, "perplexity": perplexity, "tokens": count, "examples": len(examples)}


def _loss_sums(model, input_ids, attention_mask, shift_labels):
    """Summed loss and target count of a batch. The LM head runs on the response positions
    only, a chunk of rows at a time: the whole [batch, length, vocab] logits (800 MB in fp32 for
    16 x 256 tokens of a 49k vocabulary) are never built, and the held-out pass of a short-answer
    study took 0.75x the time. A model whose decoder body cannot be found gets its own logits."""
    try:
        return full_loss_sums(model, input_ids, attention_mask, shift_labels, loss_chunk=DEFAULT_LOSS_CHUNK)
    except UnsupportedModelError:
        return full_loss_sums(model, input_ids, attention_mask, shift_labels, loss_chunk=0)
