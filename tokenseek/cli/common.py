"""Argument groups other jobs share with ``tokenseek train``.

They are built from :class:`tokenseek.train.recipe.TrainConfig`'s fields, so a flag means the
same thing, with the same default and help, in every command.
"""

from __future__ import annotations

import argparse

from tokenseek.cli.config import add_options, parse_pairs
from tokenseek.models.adapters import ADAPTER_OPTIONS

MODEL_OPTIONS = ("model",)
DATA_OPTIONS = ("data", "format", "split", "subset", "fields", "limit", "template", "max_length", "train_on_prompt")
SELECTION_OPTIONS = ("ratio", "alpha", "beta", "select_from")
PRECISION_OPTIONS = ("dtype",)
SHARED_OPTIONS = MODEL_OPTIONS + DATA_OPTIONS + SELECTION_OPTIONS + PRECISION_OPTIONS + ADAPTER_OPTIONS


def _add(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    from tokenseek.train.recipe import TrainConfig

    add_options(p, TrainConfig, only=names, suppress=False)


def check_shared_args(args: argparse.Namespace) -> None:
    """The choices and ranges of the train options a command shares (``score --max-length 1``, ``bench --lora-r 0``)."""
    from tokenseek.train.recipe import TrainConfig
    from tokenseek.utils.options import check_values

    check_values(TrainConfig, {name: getattr(args, name) for name in SHARED_OPTIONS if hasattr(args, name)})


def add_model_args(p: argparse.ArgumentParser) -> None:
    _add(p, MODEL_OPTIONS)


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    _add(p, PRECISION_OPTIONS)


def add_data_args(p: argparse.ArgumentParser) -> None:
    _add(p, DATA_OPTIONS)


def load_data(args: argparse.Namespace) -> list[dict]:
    """The records named by the ``add_data_args`` options."""
    from tokenseek.data import load_records

    return load_records(args.data, fields=args.fields, split=args.split, subset=args.subset, format=args.format, limit=args.limit)


def add_selection_args(p: argparse.ArgumentParser) -> None:
    _add(p, SELECTION_OPTIONS)


def add_adapter_args(p: argparse.ArgumentParser) -> None:
    _add(p, ADAPTER_OPTIONS)


def adapter_kwargs_from_args(args: argparse.Namespace, pefts: list[str]) -> dict:
    """``apply_peft`` keyword arguments from the ``add_adapter_args`` flags (``--peft-arg`` parsed),
    checked for every adapter method in ``pefts`` before anything is measured."""
    from tokenseek.models.adapters import adapter_kwargs, peft_config

    kwargs = adapter_kwargs(argparse.Namespace(**{**vars(args), "peft_args": parse_pairs(args.peft_args, "--peft-arg")}))
    for method in pefts:
        if method != "none":  # full-parameter rows take no adapter settings
            peft_config(method, **kwargs)
    return kwargs
