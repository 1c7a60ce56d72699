"""Prompt templates: Alpaca (paper S1.1) by default, or the tokenizer's chat template."""

from __future__ import annotations

from tokenseek.errors import TokenSeekError

TEMPLATES = ("alpaca", "chat")
DEFAULT_TEMPLATE = "alpaca"

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(record: dict, template: str = "alpaca", tokenizer=None) -> str:
    """The prompt text for ``record``; the response follows it directly."""
    instruction, extra = record["instruction"], record.get("input") or ""
    if template == "alpaca":
        if extra.strip():
            return _ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
        return _ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TokenSeekError("--template chat needs a tokenizer with a chat template; use --template alpaca")
        content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise TokenSeekError(f"unknown --template {template!r}: choose one of {', '.join(TEMPLATES)}")
