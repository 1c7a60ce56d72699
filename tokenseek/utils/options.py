"""Options declared once, on a job's config dataclass: default, help, choices, aliases.

A field made with :func:`option` is a user-facing option. ``tokenseek.cli.config`` builds the
command-line flags and the accepted YAML keys from these fields, and :func:`check_options`
validates an instance, so the library API (``TrainConfig(...)``) and the CLI share one set of
defaults and checks.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING

from tokenseek.errors import TokenSeekError


def option(
    default=MISSING,
    help: str = "",
    *,
    default_factory=MISSING,
    choices: tuple | None = None,
    aliases: tuple[str, ...] = (),
    flag: str | None = None,
    metavar: str | None = None,
    shown: str | None = None,
    bookkeeping: bool = False,
):
    """A dataclass field that is a user option.

    ``aliases``: other accepted names (flags and YAML keys), e.g. the TrainingArguments name.
    ``flag``: the flag's name when it is not the field's name (``--trainer-arg`` for ``trainer_args``).
    ``shown``: how ``--help`` describes the default when the value alone says little (``None``).
    ``bookkeeping``: the option does not change what is trained (logging, saving, output place).
    """
    metadata = {
        "help": help,
        "choices": choices,
        "aliases": tuple(aliases),
        "flag": flag,
        "metavar": metavar,
        "shown": shown,
        "bookkeeping": bookkeeping,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are user options (declared with :func:`option`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def default_text(f: dataclasses.Field) -> str:
    """How help and docs show a field's default."""
    default = default_of(f)
    return str(f.metadata["shown"] or ("none" if default is None or default == {} else default))


def defaults(cls) -> dict:
    return {f.name: default_of(f) for f in dataclasses.fields(cls)}


def value_type(cls, name: str) -> type:
    """The scalar type of a field: ``int | None`` -> int; dict and list stay as they are."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return typing.get_origin(base) or base


def aliases(cls) -> dict[str, str]:
    """Every accepted name (field name and aliases) -> field name."""
    out = {}
    for f in options(cls):
        for name in (f.name, *f.metadata["aliases"]):
            out[name] = f.name
    return out


def coerce(cls, name: str, value, where: str):
    """``value`` (from YAML or ``key=value``) as the field's type, or a one-line error.

    YAML reads ``4e-4`` as a string (it needs ``4.0e-4``), so numeric strings are converted.
    """
    kind = value_type(cls, name)
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind in (int, float):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                converted = kind(value)
                if kind is int and isinstance(value, float) and value != converted:
                    raise ValueError
                return converted
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)  # comma-list options (report_to, target_modules) as a YAML list
    elif isinstance(value, kind):
        return value
    raise TokenSeekError(f"{where}: {name} must be {_kind_name(kind)}, got {value!r}")


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(kind, kind.__name__)


def check_options(cfg) -> None:
    """Choices declared on the fields; each bad value is a one-line error naming the flag."""
    for f in options(type(cfg)):
        choices = f.metadata["choices"]
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise TokenSeekError(f"unknown --{flag_name(f)} {value!r}: choose one of {', '.join(map(str, choices))}")


def flag_name(f: dataclasses.Field) -> str:
    return (f.metadata.get("flag") or f.name).replace("_", "-")
