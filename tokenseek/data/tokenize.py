"""Turn records into token ids and labels (loss on the response unless told otherwise)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tokenseek.data.templates import format_prompt
from tokenseek.constants import IGNORE_INDEX
from tokenseek.errors import TokenSeekError


@dataclass
class TokenizedData:
    examples: list[dict]  # each: index, input_ids, labels, prompt_length
    truncated: int = 0  # examples cut to max_length
    dropped: int = 0  # examples with no trainable label left after truncation
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def fingerprint(self) -> str:
        """Hash of every token id and label, so scores made for other data are refused."""
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
        for ex in self.examples:
            digest.update(json.dumps([ex["index"], ex["input_ids"], ex["labels"]]).encode())
        return digest.hexdigest()[:16]

    def report(self) -> str:
        return (
            f"{len(self.examples)} examples; {self.truncated} truncated to {self.settings.get('max_length')} tokens; "
            f"{self.dropped} dropped (no response token left after truncation)"
        )


def tokenize_records(
    records: list[dict],
    tokenizer,
    *,
    template: str = "alpaca",
    max_length: int = 512,
    train_on_prompt: bool = False,
) -> TokenizedData:
    if max_length < 2:
        raise TokenSeekError(f"--max-length must be at least 2, got {max_length}")
    examples, truncated, dropped = [], 0, 0
    specials = template != "chat"  # a chat template already writes its special tokens
    for index, record in enumerate(records):
        prompt_ids = tokenizer(format_prompt(record, template, tokenizer), add_special_tokens=specials)["input_ids"]
        response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            response_ids = response_ids + [tokenizer.eos_token_id]
        input_ids = prompt_ids + response_ids
        labels = (list(prompt_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)) + response_ids
        if len(input_ids) > max_length:
            truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        # Position 0 is never a target (nothing predicts it), so it does not count.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            dropped += 1
            continue
        examples.append(
            {"index": index, "input_ids": input_ids, "labels": labels, "prompt_length": min(len(prompt_ids), len(input_ids))}
        )
    if not examples:
        raise TokenSeekError(
            f"no example has a response token left within --max-length {max_length}: raise --max-length"
        )
    settings = {
        "template": template,
        "max_length": max_length,
        "train_on_prompt": train_on_prompt,
        # The vocabulary itself, not the tokenizer's path: a copy elsewhere is the same tokenizer.
        "tokenizer_sha": hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16],
        "vocab_size": len(tokenizer),
    }
    return TokenizedData(examples, truncated, dropped, settings)
