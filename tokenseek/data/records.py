"""Load records (Alpaca, messages, prompt/completion or text) from a file, a dataset folder, a Hub
dataset or the built-in set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenseek.data.formats import FIELD_NAMES, SKIPPED, USABLE, check_format, choose_format, make_record
from tokenseek.errors import TokenSeekError, first_line

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")  # the Alpaca fields (the built-in data's)
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
    unknown = sorted(set(mapping) - set(FIELD_NAMES))
    if unknown:
        raise TokenSeekError(f"--fields names {unknown}, but the fields are {', '.join(FIELD_NAMES)}")
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


def _load_table(source: str, split: str, subset: str | None):
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" noise for a local file

    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, split, subset)
    if path.suffix in _FORMATS or path.exists():
        if not path.is_file():
            raise TokenSeekError(f"data file not found: {source}")
        if path.suffix not in _FORMATS:
            raise TokenSeekError(f"unsupported data file {source}: use .json, .jsonl, .csv or .parquet")
        if not path.read_bytes().strip():
            raise TokenSeekError(f"the data file {source} is empty: it has no records")
        if subset:
            raise TokenSeekError(f"--subset {subset!r} names a configuration of a Hub dataset, and {source} is a file: drop --subset")
        if _FORMATS[path.suffix] == "json":
            _check_json_file(path)
        try:
            # A file is one split, "train"; --split may still slice it ("train[:100]").
            return datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split=split)
        except Exception as exc:  # datasets raises many types for unreadable files
            raise TokenSeekError(f"could not read {source} (split {split!r}): {first_line(exc)}") from None
    try:
        return datasets.load_dataset(source, subset, split=split)
    except Exception as exc:
        raise TokenSeekError(
            f"could not load dataset {source!r} (subset {subset!r}, split {split!r}: {first_line(exc)}): give an existing "
            ".json/.jsonl/.csv/.parquet file, or a Hub dataset id with an existing --subset/--split when the Hub is reachable"
        ) from None


def _load_folder(path: Path, split: str, subset: str | None):
    """A local dataset folder: one written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
    (its Arrow shards, read by datasets' arrow builder so ``--split`` slices them as it slices a
    file), or a folder of data files such as a downloaded Hub dataset repo (``load_dataset(folder)``)."""
    import datasets

    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one subfolder per split
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        data_files = {name: sorted(str(f) for f in (path / name).glob("*.arrow")) for name in splits}
    elif (path / "state.json").is_file():  # Dataset.save_to_disk: one split, "train", like a file
        data_files = {"train": sorted(str(f) for f in path.glob("*.arrow"))}
    else:
        data_files = None
    if data_files is not None and subset:
        raise TokenSeekError(f"--subset {subset!r} names a configuration of a Hub dataset, and {path} is a saved dataset: drop --subset")
    try:
        if data_files is not None:
            return datasets.load_dataset("arrow", data_files={k: v for k, v in data_files.items() if v}, split=split)
        return datasets.load_dataset(str(path), subset, split=split)
    except Exception as exc:  # datasets raises many types for unreadable folders and unknown splits
        raise TokenSeekError(
            f"could not read the dataset folder {path} (split {split!r}): {first_line(exc)}; give a folder written by "
            "save_to_disk, a folder of .json/.jsonl/.csv/.parquet files, or one such file"
        ) from None


def load_records(
    source: str | None = None,
    *,
    fields: dict[str, str] | str | None = None,
    split: str = "train",
    subset: str | None = None,
    format: str = "auto",
    limit: int | None = None,
) -> list[dict]:
    """Records in one format's shape (see :mod:`tokenseek.data.formats`).

    ``source=None`` gives the built-in demo dataset (Alpaca). ``format="auto"`` picks the
    first format whose columns the data has; Alpaca records have exactly the keys
    instruction, input, output (strings), as before formats existed.
    """
    from tokenseek.data.builtin import builtin_records

    check_format(format)
    renamed = parse_field_map(fields)
    mapping = {name: name for name in FIELD_NAMES} | renamed
    if source is None:
        if format not in ("auto", "alpaca"):
            raise TokenSeekError(f"the built-in data is Alpaca, not {format}: drop --format or give --data")
        rows, columns = builtin_records(), set(FIELDS)
    else:
        rows = _load_table(str(source), split, subset)
        columns = set(rows.column_names)
    fmt = choose_format(columns, mapping, format, set(renamed))
    logger.info("data format: %s", fmt)
    records, empty = [], 0
    for index, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        record = make_record(row, fmt, mapping, index)
        if record is None:
            empty += 1
            continue
        records.append(record)
    if empty:
        logger.warning("skipped %d record(s) with nothing to train on (%s)", empty, SKIPPED[fmt])
    if not records:
        raise TokenSeekError(f"the dataset {source or '(built-in)'} has no usable records (none with {USABLE[fmt]})")
    return records


def records_from(settings) -> list[dict]:
    """The records named by the data options (``data``, ``fields``, ``split``, ``subset``,
    ``format``, ``limit``) of any settings object: a TrainConfig, a VisualizeConfig, or the
    parsed flags of a command that borrows train's data options."""
    return load_records(
        settings.data, fields=settings.fields, split=settings.split, subset=settings.subset, format=settings.format, limit=settings.limit
    )
