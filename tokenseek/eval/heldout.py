"""Held-out loss: mean cross-entropy over response tokens, as training measures it."""

from __future__ import annotations

import math

import torch

from tokenseek.data import tokenize_records
from tokenseek.data.templates import DEFAULT_TEMPLATE
from tokenseek.data.tokenize import DEFAULT_MAX_LENGTH
from tokenseek.constants import IGNORE_INDEX


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
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            # Position t predicts token t+1.
            targets = labels[:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += losses.item()
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    loss = total / count
    perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709
    return {"loss": loss, "perplexity": perplexity, "tokens": count, "examples": len(examples)}
