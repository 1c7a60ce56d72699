"""Conversations through the tokenizer's chat template, with the loss on assistant replies.

Where a reply starts and ends is read from the template itself, never guessed from role
markers:

- a template with ``{% generation %}`` markers says so directly
  (``apply_chat_template(return_assistant_tokens_mask=True)``);
- otherwise the conversation is rendered up to each reply with the generation prompt and
  through the reply: the reply is the text between the two (what TRL does for a
  conversational prompt/completion). This needs every rendered prefix to be a prefix of
  the whole rendering; templates that rewrite earlier turns get a one-line error.

The whole conversation is tokenised once, so token boundaries are those of the full text.
"""

from __future__ import annotations

import re

from tokenseek.errors import TokenSeekError, first_line

_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def check_chat_template(tokenizer) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TokenSeekError(
            "conversational data needs a tokenizer with a chat template: use a chat (instruct) model's tokenizer"
        )


def has_generation_markers(tokenizer) -> bool:
    return bool(_GENERATION_BLOCK.search(tokenizer.chat_template or ""))


def render(tokenizer, messages: list[dict], index: int, *, generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja raises template-defined errors of any type (e.g. "roles must alternate")
        raise TokenSeekError(f"record {index}: the chat template cannot render it ({first_line(exc)}): fix the record") from None


def reply_char_spans(tokenizer, messages: list[dict], ranges: list[tuple[int, int]], index: int) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per message range ``[start, end)``, the characters the
    template writes for those messages after the generation prompt that precedes them."""
    full = render(tokenizer, messages, index)
    spans = []
    for start, end in ranges:
        before = render(tokenizer, messages[:start], index, generation_prompt=True)
        through = render(tokenizer, messages[:end], index)
        if not (through.startswith(before) and full.startswith(through)):
            raise TokenSeekError(
                f"record {index}: the chat template renders the conversation differently when it is cut before a "
                "reply (it rewrites earlier turns), so the replies cannot be located: use a template with "
                "{% generation %} markers"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokens_in_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it starts inside one of ``spans``."""
    if not getattr(tokenizer, "is_fast", False):
        raise TokenSeekError("conversational data needs a fast tokenizer (character offsets): load the model's fast tokenizer")
    # The template writes its own special tokens.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [any(lo <= start < hi for lo, hi in spans) for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), inside


def encode_conversation(tokenizer, messages: list[dict], index: int) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and which of them are assistant replies."""
    check_chat_template(tokenizer)
    if has_generation_markers(tokenizer):
        try:
            encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        except Exception as exc:  # template-defined errors of any type, as in render()
            raise TokenSeekError(f"record {index}: the chat template cannot render it ({first_line(exc)}): fix the record") from None
        return list(encoded["input_ids"]), [bool(bit) for bit in encoded["assistant_masks"]]
    replies = [(i, i + 1) for i, message in enumerate(messages) if message["role"] == "assistant"]
    return tokens_in_spans(tokenizer, *reply_char_spans(tokenizer, messages, replies, index))


def encode_chat_completion(tokenizer, prompt: list[dict], completion: list[dict], index: int) -> tuple[list[int], list[bool]]:
    """Token ids of a conversational prompt + completion and which of them are the completion."""
    check_chat_template(tokenizer)
    ranges = [(len(prompt), len(prompt) + len(completion))]
    return tokens_in_spans(tokenizer, *reply_char_spans(tokenizer, prompt + completion, ranges, index))
