"""Dataset formats: which columns make which format, and one record shape per format.

A loaded record has exactly the keys of its format (``RECORD_KEYS``), so later stages
(tokenisation, held-out files) know the format from the record itself.

- ``alpaca``: instruction, input, output (loss on the output);
- ``messages``: a conversation, a list of ``{"role", "content"}`` (loss on assistant replies);
- ``prompt_completion``: TRL's format; prompt and completion are strings, or lists of
  messages (conversational; loss on the completion);
- ``text``: plain text (loss on every token).
"""

from __future__ import annotations

from tokenseek.errors import TokenSeekError

# Auto-detection tries these in order. Alpaca comes first so that every dataset that loaded
# before formats existed (Alpaca dumps often also carry a formatted "text" column) still does.
FORMATS = ("alpaca", "messages", "prompt_completion", "text")
RECORD_KEYS = {
    "alpaca": ("instruction", "input", "output"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
# Columns a format cannot do without (Alpaca's input is optional).
REQUIRED = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
# Records make_record skips (nothing to learn from them), and what a usable one has.
SKIPPED = {
    "alpaca": "an empty instruction or output",
    "messages": "no non-empty assistant reply",
    "prompt_completion": "an empty completion",
    "text": "empty text",
}
USABLE = {
    "alpaca": "both instruction and output",
    "messages": "an assistant reply",
    "prompt_completion": "a completion",
    "text": "text",
}
# Every name --fields may map, in a stable order.
FIELD_NAMES = tuple(dict.fromkeys(name for fmt in FORMATS for name in RECORD_KEYS[fmt]))


def check_format(name: str) -> None:
    if name != "auto" and name not in FORMATS:
        raise TokenSeekError(f"unknown --format {name!r}: choose auto or one of {', '.join(FORMATS)}")


def choose_format(columns: set[str], mapping: dict[str, str], forced: str = "auto", mapped: set[str] = frozenset()) -> str:
    """The format of a table with ``columns`` (after ``--fields`` renaming), or a one-line error.

    ``mapped`` are the names the user renamed with ``--fields``: naming one format's fields
    says which format is meant, so a wrong column name is reported as such.
    """
    check_format(forced)
    implied = [fmt for fmt in FORMATS if mapped & set(RECORD_KEYS[fmt])]
    if forced == "auto" and len(implied) == 1:
        forced = implied[0]
    if forced != "auto":
        missing = [name for name in REQUIRED[forced] if mapping[name] not in columns]
        if missing:
            raise TokenSeekError(
                f"the data has no {mapping[missing[0]]!r} column for the {forced} format (columns: {_listing(columns)}): "
                f"map one with --fields {missing[0]}=<column>"
            )
        return forced
    for fmt in FORMATS:
        if all(mapping[name] in columns for name in REQUIRED[fmt]):
            return fmt
    wanted = "; ".join(f"{fmt}: {'+'.join(REQUIRED[fmt])}" for fmt in FORMATS)
    raise TokenSeekError(
        f"the data fits no format (columns: {_listing(columns)}; {wanted}): "
        "name your columns with --fields, e.g. --fields instruction=question,output=answer"
    )


def _listing(columns: set[str]) -> str:
    return ", ".join(sorted(columns)) or "none"


def make_record(row: dict, fmt: str, mapping: dict[str, str], index: int) -> dict | None:
    """``row`` in ``fmt``'s record shape, or None when it has nothing to learn from."""
    if fmt == "alpaca":
        return _alpaca(row, mapping, index)
    values = {name: row.get(mapping[name]) for name in RECORD_KEYS[fmt]}
    for name, value in values.items():
        if value is None:
            raise TokenSeekError(f"record {index} has no {mapping[name]!r} field: add it or remove the record")
    if fmt == "messages":
        messages = _conversation(values["messages"], mapping["messages"], index)
        return {"messages": messages} if any(_is_reply(m) for m in messages) else None
    if fmt == "prompt_completion":
        return _prompt_completion(values, mapping, index)
    return {"text": str(values["text"])} if str(values["text"]).strip() else None


def _alpaca(row: dict, mapping: dict[str, str], index: int) -> dict | None:
    record = {name: row.get(mapping[name]) for name in RECORD_KEYS["alpaca"]}
    for name in REQUIRED["alpaca"]:
        if record[name] is None:
            raise TokenSeekError(f"record {index} has no {mapping[name]!r} field: add it or remove the record")
    if not str(record["instruction"]).strip() or not str(record["output"]).strip():
        return None  # real datasets (Alpaca included) have a few; nothing to learn from them
    return {name: "" if value is None else str(value) for name, value in record.items()}


def _conversation(value, column: str, index: int) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise TokenSeekError(
            f"record {index}: {column!r} must be a list of {{\"role\": ..., \"content\": ...}} messages; "
            "fix the record or choose another --format"
        )
    # Hub datasets stored as Parquet add null keys (e.g. tool_calls) to every message; the
    # template must not see them as real fields.
    return [{k: v for k, v in m.items() if v is not None} for m in value]


def _is_reply(message: dict) -> bool:
    return message["role"] == "assistant" and bool(str(message["content"]).strip())


def _prompt_completion(values: dict, mapping: dict[str, str], index: int) -> dict | None:
    prompt, completion = values["prompt"], values["completion"]
    if isinstance(prompt, list) != isinstance(completion, list):
        raise TokenSeekError(
            f"record {index}: prompt and completion must both be strings or both be message lists; fix the record"
        )
    if isinstance(prompt, list):
        prompt = _conversation(prompt, mapping["prompt"], index)
        completion = _conversation(completion, mapping["completion"], index)
        return {"prompt": prompt, "completion": completion} if any(str(m["content"]).strip() for m in completion) else None
    return {"prompt": str(prompt), "completion": str(completion)} if str(completion).strip() else None


def record_format(record: dict) -> str:
    """The format of a loaded record, from its keys (see ``RECORD_KEYS``)."""
    keys = set(record)
    for fmt in FORMATS:
        if set(REQUIRED[fmt]) <= keys <= set(RECORD_KEYS[fmt]):
            return fmt
    raise TokenSeekError(
        f"a record has keys {sorted(keys)}, which match no format: load data with tokenseek.data.load_records"
    )


def is_conversational(record: dict) -> bool:
    return "messages" in record or isinstance(record.get("prompt"), list)
