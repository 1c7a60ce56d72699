"""Options declared once, on a job's config dataclass: default, help, choices, range, aliases.

A field made with :func:`option` is a user-facing option. ``tokenseek.cli.config`` builds the
command-line flags and the accepted YAML keys from these fields, and :func:`check_options`
validates an instance, so the library API (``TrainConfig(...)``) and the CLI share one set of
defaults and checks.
"""

from __future__ import annotations

import dataclasses
import operator
import types
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
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    comma: bool = False,
    several: bool = False,
    required: bool = False,
    positional: bool = False,
    negatable: bool = True,
):
    """A dataclass field that is a user option.

    ``minimum``, ``maximum`` (inclusive), ``above`` and ``below`` (strict): the range a value
    (or each item of a list) must lie in; ``None`` (an unset optional value) is always allowed.
    ``comma``: a list option given as one comma-separated value (``--ratios 1.0,0.1``), not a
    repeated flag. ``several``: a list option given as several values after one flag
    (``--runs A B C``). ``required``: the command line must give it (its default stays ``None``).
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
        "range": {"minimum": minimum, "above": above, "maximum": maximum, "below": below},  # lower bounds first
        "comma": comma,
        "several": several,
        "required": required or positional,
        "positional": positional,
        "negatable": negatable,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_of(cls, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def options(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are user options (declared with :func:`option`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def default_text(f: dataclasses.Field) -> str:
    """How help and docs show a field's default."""
    default = default_of(f)
    if f.metadata["shown"]:
        return f.metadata["shown"]
    if f.metadata.get("comma") and isinstance(default, list):
        return ",".join(map(str, default))
    return "none" if default is None or default == {} else str(default)


def defaults(cls) -> dict:
    return {f.name: default_of(f) for f in dataclasses.fields(cls)}


def value_type(cls, name: str) -> type:
    """The type of a field: ``int | None`` -> int, ``list[int]`` -> list, ``dict`` -> dict."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def item_type(cls, name: str) -> type:
    """The item type of a list field (``list[int]`` -> int); str when the hint does not say."""
    hint = typing.get_type_hints(cls)[name]
    lists = [a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is list]
    return (typing.get_args(lists[0]) or (str,))[0] if lists else str


def parse_comma_list(text: str, kind: type, flag: str) -> list:
    """``"1.0,0.5"`` -> ``[1.0, 0.5]``; a one-line error naming the flag otherwise."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise TokenSeekError(f"{flag} is empty: give a comma-separated list")
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise TokenSeekError(f"{flag} {text!r} is not a comma-separated list of {kind.__name__} values") from None


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
    elif kind is list and isinstance(value, (str, int, float)) and field_of(cls, name).metadata.get("comma"):
        return parse_comma_list(str(value), item_type(cls, name), f"{where}: {name}")
    elif isinstance(value, kind):
        return value
    raise TokenSeekError(f"{where}: {name} must be {_kind_name(kind)}, got {value!r}")


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(kind, kind.__name__)


def check_options(cfg) -> None:
    """Choices and ranges declared on the fields; each bad value is a one-line error naming the flag."""
    check_values(type(cfg), {f.name: getattr(cfg, f.name) for f in options(type(cfg))})


def check_values(cls, values: dict) -> None:
    """:func:`check_options` for some of ``cls``'s options, given as ``{field name: value}``."""
    for f in options(cls):
        value = values.get(f.name)
        if value is None:
            if f.metadata.get("required") and f.name in values:
                raise TokenSeekError(f"{shown_name(f)} is required")
            continue
        for item in value if isinstance(value, list) else [value]:
            _check_value(f, item)


def _check_value(f: dataclasses.Field, value) -> None:
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise TokenSeekError(f"unknown {shown_name(f)} {value!r}: choose one of {', '.join(map(str, choices))}")
    # "not inside" rather than "outside", so that NaN is refused too.
    if isinstance(value, (int, float)) and not all(_INSIDE[kind](value, bound) for kind, bound in _range_parts(f)):
        raise TokenSeekError(f"{shown_name(f)} must be {range_text(f)}, got {value!r}")


_INSIDE = {"minimum": operator.ge, "maximum": operator.le, "above": operator.gt, "below": operator.lt}
_RANGE_WORDS = {"minimum": "at least", "maximum": "at most", "above": "greater than", "below": "less than"}


def _range_parts(f: dataclasses.Field) -> list[tuple[str, float]]:
    return [(kind, bound) for kind, bound in f.metadata.get("range", {}).items() if bound is not None]


def range_text(f: dataclasses.Field) -> str:
    """``"at least 1"``, ``"at least 0 and less than 1"``; empty for an option without a range."""
    return " and ".join(f"{_RANGE_WORDS[kind]} {bound:g}" for kind, bound in _range_parts(f))


def describe(f: dataclasses.Field) -> str:
    """The option's help with its choices and range, as ``--help`` and the docs tables show it."""
    text = f.metadata["help"]
    if f.metadata["choices"]:
        text += f"; one of {', '.join(map(str, f.metadata['choices']))}"
    if range_text(f):
        text += f"; {range_text(f)}"
    return text


def ignored(cfg, reasons: dict[str, str], *, keywords: bool = False) -> list[str]:
    """``--flag VALUE has no effect: REASON`` (``name=VALUE ...`` with ``keywords``, for a
    Python API) for each field named in ``reasons`` (field name -> why this job never reads it)
    whose value differs from its default. Jobs log these as warnings rather than refuse them:
    one config file often serves several jobs."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    return [
        (f"{name}={getattr(cfg, name)!r}" if keywords else f"--{flag_name(fields[name])} {getattr(cfg, name)}") + f" has no effect: {reason}"
        for name, reason in reasons.items()
        if getattr(cfg, name) != default_of(fields[name])
    ]


def shown_name(f: dataclasses.Field) -> str:
    """How messages name an option: ``--flag``, or a positional argument's ``METAVAR``."""
    if f.metadata.get("positional"):
        return f.metadata["metavar"] or f.name.upper()
    return f"--{flag_name(f)}"


def flag_name(f: dataclasses.Field) -> str:
    return (f.metadata.get("flag") or f.name).replace("_", "-")
