"""Flags and YAML keys built from a job's config dataclass (see ``tokenseek.utils.options``).

Precedence, lowest first: the dataclass default, ``--config FILE`` (YAML), flags given on the
command line. Flags are parsed with ``argparse.SUPPRESS`` defaults, so the namespace holds
exactly the flags the user typed: a flag given at its default value still beats the YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable

from tokenseek.errors import TokenSeekError, first_line
from tokenseek.utils.options import (
    aliases,
    coerce,
    default_of,
    default_text,
    describe,
    field_of,
    flag_name,
    item_type,
    options,
    parse_comma_list,
    value_type,
)


def add_options(parser: argparse.ArgumentParser, cls, *, only=None, skip=(), suppress: bool = True) -> None:
    """One flag per option field of ``cls`` (plus its aliases), help ending in the default.

    ``suppress=False`` gives the namespace the defaults too, for commands without ``--config``.
    All of a class's options (no ``only``) are shown in its ``GROUPS``, if it declares them.
    """
    sections = _help_sections(parser, cls) if only is None else {}
    for f in options(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        default = default_of(f)
        kind = value_type(cls, f.name)
        if f.metadata["positional"]:
            _add_positional(sections.get(f.name, parser), cls, f)
            continue
        names = [f"--{flag_name(f)}"]
        if kind is not dict:  # a dict's alias is its YAML block name (training_args), not a flag
            names += [f"--{a.replace('_', '-')}" for a in f.metadata["aliases"]]
        kwargs = {"dest": f.name, "help": _help(f), "default": argparse.SUPPRESS if suppress else default}
        if f.metadata["required"] and not suppress:  # with --config the YAML may give it
            kwargs["required"] = True
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if f.metadata["negatable"] else "store_true"
        elif kind is list and f.metadata["comma"]:  # one comma-separated value, split by from_args/resolve
            kwargs.update(metavar=f.metadata["metavar"] or "A,B,...")
        elif kind is list and f.metadata["several"]:  # --runs A B C
            kwargs.update(nargs="+", metavar=f.metadata["metavar"] or f.name.upper())
        elif kind in (dict, list):  # repeatable flag; a dict's items are KEY=VALUE
            kwargs.update(action="append", metavar=f.metadata["metavar"] or ("KEY=VALUE" if kind is dict else f.name.upper()))
            if not suppress:
                kwargs["default"] = None
        else:
            kwargs.update(type=kind, metavar=f.metadata["metavar"] or f.name.upper())
        sections.get(f.name, parser).add_argument(*names, **kwargs)


def _add_positional(parser: argparse.ArgumentParser, cls, f: dataclasses.Field) -> None:
    several = value_type(cls, f.name) is list
    kwargs = {"nargs": "+"} if several else {"type": value_type(cls, f.name)}
    parser.add_argument(f.name, metavar=f.metadata["metavar"] or f.name.upper(), help=describe(f).replace("%", "%%"), **kwargs)


def _help_sections(parser: argparse.ArgumentParser, cls) -> dict:
    """``{field name: argument group}`` from ``cls.GROUPS`` (``{}`` when it has none)."""
    groups = getattr(cls, "GROUPS", {})
    return {name: group for title, names in groups.items() for group in [parser.add_argument_group(title)] for name in names}


def _help(f: dataclasses.Field) -> str:
    default = "required" if f.metadata["required"] else f"default: {default_text(f)}"
    return f"{describe(f)} ({default})".replace("%", "%%")


def from_args(cls, args: argparse.Namespace, **others):
    """An instance of ``cls`` from a namespace parsed with ``suppress=False`` (commands without --config).

    ``others``: values of the fields that are not options of ``cls`` (built by the command).
    """
    return cls(**{f.name: _comma_split(cls, f, getattr(args, f.name)) for f in options(cls)}, **others)


def _comma_split(cls, f: dataclasses.Field, value):
    if f.metadata["comma"] and isinstance(value, str):
        return parse_comma_list(value, item_type(cls, f.name), f"--{flag_name(f)}")
    return value


def normalise_flag(token: str) -> str:
    """``--learning_rate=1e-4`` -> ``--learning-rate=1e-4``: HF users type underscores."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


def resolve(cls, args: argparse.Namespace, *, extra: tuple[str, Callable[[str], bool]] | None = None):
    """An instance of ``cls`` from its defaults, ``args.config`` (YAML) and the flags given.

    ``extra = (field, accepts)``: YAML keys that are not options but that ``accepts(key)``
    are collected into the dict field ``field`` (TrainingArguments names into ``trainer_args``).
    """
    values = read_yaml(cls, args.config, extra) if getattr(args, "config", None) else {}
    for f in options(cls):
        if not hasattr(args, f.name):
            continue  # not given on the command line
        given = getattr(args, f.name)
        if value_type(cls, f.name) is dict:
            given = {**values.get(f.name, {}), **parse_pairs(given, f"--{flag_name(f)}")}
        values[f.name] = _comma_split(cls, f, given)
    return cls(**values)


def parse_pairs(pairs: list[str] | None, flag: str) -> dict:
    """``["key=value", ...]`` with YAML-typed values (``true``, ``3``, ``[a, b]``)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise TokenSeekError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text  # not YAML (e.g. "a: b: c"): keep the text as given
        out[key.strip().replace("-", "_")] = value
    return out


def read_yaml(cls, path: str, extra=None) -> dict:
    """The options set in a YAML file, keyed by field name and converted to the field types."""
    import yaml

    if not Path(path).is_file():
        raise TokenSeekError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise TokenSeekError(f"{path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise TokenSeekError(f"{path} must hold a mapping of option: value")
    names = aliases(cls)
    values: dict = {}
    unknown = []
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key in names and value_type(cls, names[key]) is dict:
            values[names[key]] = {**values.get(names[key], {}), **coerce(cls, names[key], value, path)}
        elif key in names:
            if names[key] in values:
                raise TokenSeekError(f"{path}: {names[key]} is set twice (under two names): keep one")
            values[names[key]] = coerce(cls, names[key], value, path)
        elif extra and extra[1](key):
            values[extra[0]] = {**values.get(extra[0], {}), key: value}
        else:
            unknown.append(key)
    if unknown:
        raise TokenSeekError(f"{path}: unknown option(s) {', '.join(sorted(unknown))} (see `tokenseek <command> --help`)")
    return values


def options_table(cls) -> str:
    """The Markdown table of ``cls``'s options (docs/TRAINING.md holds TrainConfig's; a test compares)."""
    rows = ["| flag | YAML key (aliases) | default | what it does |", "|---|---|---|---|"]
    groups = getattr(cls, "GROUPS", None) or {"": tuple(f.name for f in options(cls))}
    for title, names in groups.items():
        if title:
            rows.append(f"| **{title}** | | | |")
        rows += [_table_row(cls, field_of(cls, name)) for name in names]
    return "\n".join(rows)


def _table_row(cls, f: dataclasses.Field) -> str:
    text = describe(f).replace("|", chr(92) + "|")
    flag = f"--{flag_name(f)}" + (" KEY=VALUE" if value_type(cls, f.name) is dict else "")
    keys = ", ".join([f.name, *f.metadata["aliases"]])
    return f"| `{flag}` | `{keys}` | {default_text(f)} | {text} |"
