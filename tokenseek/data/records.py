"""Load Alpaca-style records (instruction, input, output) from a file, a Hub dataset or the built-in set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenseek.errors import TokenSeekError, first_line

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")
_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def parse_field_map(text: str | dict | None) -> dict[str, str]:
    """``"instruction=question,output=answer"`` -> ``{"instruction": "question", "output": "answer"}``."""
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = text.items()
    else:
        try:
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            pairs = [(k.strip(), v.strip()) for k, v in pairs]
        except ValueError:
            raise TokenSeekError(f"--fields {text!r} is not a list of ours=theirs pairs, e.g. instruction=question,output=answer") from None
    mapping = dict(pairs)
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise TokenSeekError(f"--fields names {unknown}, but the fields are {', '.join(FIELDS)}")
    return mapping


def _check_json_file(path: Path) -> None:
    """Fail with the line number of the first malformed line (datasets' own error hides it)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenSeekError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokenSeekError(f"{path}: malformed JSON on line {lineno}: {exc.msg}") from None
        if not isinstance(record, dict):
            raise TokenSeekError(f"{path}: line {lineno} is not a JSON object")


def _load_table(source: str, split: str):
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" noise for a local file

    path = Path(source).expanduser()
    if path.suffix in _FORMATS or path.exists():
        if not path.is_file():
            raise TokenSeekError(f"data file not found: {source}")
        if path.suffix not in _FORMATS:
            raise TokenSeekError(f"unsupported data file {source}: use .json, .jsonl, .csv or .parquet")
        if not path.read_bytes().strip():
            raise TokenSeekError(f"the data file {source} is empty: it has no records")
        if _FORMATS[path.suffix] == "json":
            _check_json_file(path)
        try:
            return datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:  # datasets raises many types for unreadable files
            raise TokenSeekError(f"could not read {source}: {first_line(exc)}") from None
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as exc:
        raise TokenSeekError(
            f"could not load dataset {source!r} ({first_line(exc)}): give an existing "
            ".json/.jsonl/.csv/.parquet file, or a Hub dataset id when the Hub is reachable"
        ) from None


def load_records(
    source: str | None = None,
    *,
    fields: dict[str, str] | str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> list[dict]:
    """Records as dicts with exactly the keys instruction, input, output (strings).

    ``source=None`` gives the built-in demo dataset.
    """
    from tokenseek.data.builtin import builtin_records

    mapping = {name: name for name in FIELDS} | parse_field_map(fields)
    if source is None:
        rows = builtin_records()
        columns = set(FIELDS)
    else:
        table = _load_table(str(source), split)
        columns = set(table.column_names)
        rows = table
    for required in ("instruction", "output"):
        if mapping[required] not in columns:
            raise TokenSeekError(
                f"the data has no {mapping[required]!r} column (columns: {', '.join(sorted(columns))}): "
                f"map one with --fields {required}=<column>"
            )
    records, empty = [], 0
    for index, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        record = {name: row.get(mapping[name]) for name in FIELDS}
        for name in ("instruction", "output"):
            if record[name] is None:
                raise TokenSeekError(f"record {index} has no {mapping[name]!r} field: add it or remove the record")
        if not str(record["instruction"]).strip() or not str(record["output"]).strip():
            empty += 1  # real datasets (Alpaca included) have a few; nothing to learn from them
            continue
        records.append({name: "" if value is None else str(value) for name, value in record.items()})
    if empty:
        logger.warning("skipped %d record(s) with an empty instruction or output", empty)
    if not records:
        raise TokenSeekError(f"the dataset {source or '(built-in)'} has no usable records (none with both instruction and output)")
    return records
