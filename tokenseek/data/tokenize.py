"""Turn records into token ids and labels (loss on the response, replies or text unless told otherwise)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tokenseek.data.chat import encode_chat_completion, encode_conversation
from tokenseek.data.formats import is_conversational, record_format
from tokenseek.data.templates import DEFAULT_TEMPLATE, format_prompt
from tokenseek.constants import IGNORE_INDEX
from tokenseek.errors import TokenSeekError

DEFAULT_MAX_LENGTH = 512  # tokens; long enough for Alpaca-style records


@dataclass
class TokenizedData:
    examples: list[dict]  # each: index, input_ids, labels, prompt_length
    truncated: int = 0  # examples cut to max_length
    dropped: int = 0  # examples with no trainable label left after truncation
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def format(self) -> str:
        # Alpaca settings carry no "format" key, so their fingerprint is what it was before formats.
        return self.settings.get("format", "alpaca")

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


def tokenizer_fingerprint(tokenizer) -> str:
    # The vocabulary itself, not the tokenizer's path: a copy elsewhere is the same tokenizer.
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def prompt_ids(record: dict, tokenizer, template: str = DEFAULT_TEMPLATE) -> list[int]:
    """An Alpaca record's prompt token ids exactly as training sees them (generation starts right after)."""
    specials = template != "chat"  # a chat template already writes its special tokens
    return tokenizer(format_prompt(record, template, tokenizer), add_special_tokens=specials)["input_ids"]


def _alpaca(record: dict, tokenizer, template: str) -> tuple[list[int], list[bool]]:
    return _prompt_then_response(tokenizer, prompt_ids(record, tokenizer, template), record["output"])


def _prompt_then_response(tokenizer, prompt: list[int], response: str) -> tuple[list[int], list[bool]]:
    """Prompt ids, then the response tokenised on its own and closed with EOS (the target)."""
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    return list(prompt) + response_ids, [False] * len(prompt) + [True] * len(response_ids)


def _prompt_completion(record: dict, tokenizer, index: int) -> tuple[list[int], list[bool]]:
    if is_conversational(record):
        return encode_chat_completion(tokenizer, record["prompt"], record["completion"], index)
    # As the Alpaca path with the prompt given verbatim (TRL applies no template here either).
    return _prompt_then_response(tokenizer, tokenizer(record["prompt"])["input_ids"], record["completion"])


def _text(record: dict, tokenizer) -> tuple[list[int], list[bool]]:
    ids = tokenizer(record["text"])["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]  # so the model learns where a document ends
    return ids, [True] * len(ids)


def encode_record(record: dict, tokenizer, *, fmt: str, template: str = DEFAULT_TEMPLATE, index: int = 0) -> tuple[list[int], list[bool]]:
    """Token ids of one record and which of them carry the loss (before --train-on-prompt)."""
    if fmt == "alpaca":
        return _alpaca(record, tokenizer, template)
    if fmt == "messages":
        return encode_conversation(tokenizer, record["messages"], index)
    if fmt == "prompt_completion":
        return _prompt_completion(record, tokenizer, index)
    return _text(record, tokenizer)


def _data_format(records: list[dict], template: str) -> str:
    formats = {record_format(record) for record in records}
    if len(formats) > 1:
        raise TokenSeekError(f"the records mix formats ({', '.join(sorted(formats))}): load them with one --format")
    fmt = formats.pop() if formats else "alpaca"
    if fmt != "alpaca" and template != "alpaca":
        raise TokenSeekError(
            f"--template {template} applies to Alpaca records; {fmt} data is rendered as given "
            "(conversations with the tokenizer's chat template): drop --template"
        )
    return fmt


def tokenize_records(
    records: list[dict],
    tokenizer,
    *,
    template: str = DEFAULT_TEMPLATE,
    max_length: int = DEFAULT_MAX_LENGTH,
    train_on_prompt: bool = False,
) -> TokenizedData:
    """Token ids and labels; the format comes from the records (see :mod:`tokenseek.data.formats`).

    ``prompt_length`` counts the tokens before the first loss-carrying one (the prompt, or
    everything before the first reply). ``template`` applies to Alpaca records only.
    """
    if max_length < 2:
        raise TokenSeekError(f"--max-length must be at least 2, got {max_length}")
    fmt = _data_format(records, template)
    examples, truncated, dropped = [], 0, 0
    for index, record in enumerate(records):
        input_ids, target = encode_record(record, tokenizer, fmt=fmt, template=template, index=index)
        labels = [tok if (on or train_on_prompt) else IGNORE_INDEX for tok, on in zip(input_ids, target)]
        prompt_length = target.index(True) if True in target else len(target)
        if len(input_ids) > max_length:
            truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        # Position 0 is never a target (nothing predicts it), so it does not count.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            dropped += 1
            continue
        examples.append({"index": index, "input_ids": input_ids, "labels": labels, "prompt_length": min(prompt_length, len(input_ids))})
    if not examples:
        raise TokenSeekError(
            f"no example has a response token left within --max-length {max_length}: raise --max-length"
        )
    settings = {
        "template": template,
        "max_length": max_length,
        "train_on_prompt": train_on_prompt,
        "tokenizer_sha": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
    }
    if fmt != "alpaca":  # Alpaca settings stay as they were: stored scores depend on this fingerprint
        settings["format"] = fmt
    return TokenizedData(examples, truncated, dropped, settings)


def tokenize_with(records: list[dict], tokenizer, settings) -> TokenizedData:
    """``tokenize_records`` with the ``template``, ``max_length`` and ``train_on_prompt`` of any
    settings object (a TrainConfig, a VisualizeConfig, parsed train flags)."""
    return tokenize_records(records, tokenizer, template=settings.template, max_length=settings.max_length, train_on_prompt=settings.train_on_prompt)
