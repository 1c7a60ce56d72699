"""Argument groups other jobs share with ``tokenseek train``.

They are built from :class:`tokenseek.train.config.TrainConfig`'s fields, so a flag means the
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
STEP_OPTIONS = ("context_chunk",)  # how the ditched step runs, for bench
ADAPTER_FLAGS = ("peft_config",) + ADAPTER_OPTIONS  # what add_adapter_args adds
SHARED_OPTIONS = MODEL_OPTIONS + DATA_OPTIONS + SELECTION_OPTIONS + PRECISION_OPTIONS + STEP_OPTIONS + ADAPTER_OPTIONS


def _add(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    from tokenseek.train.config import TrainConfig

    add_options(p, TrainConfig, only=names, suppress=False)


def check_shared_args(args: argparse.Namespace) -> None:
    """The choices and ranges of the train options a command shares (``score --max-length 1``, ``bench --lora-r 0``)."""
    from tokenseek.train.config import TrainConfig
    from tokenseek.utils.options import check_values

    check_values(TrainConfig, {name: getattr(args, name) for name in SHARED_OPTIONS if hasattr(args, name)})


def add_model_args(p: argparse.ArgumentParser) -> None:
    _add(p, MODEL_OPTIONS)


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    _add(p, PRECISION_OPTIONS)


def add_step_args(p: argparse.ArgumentParser) -> None:
    _add(p, STEP_OPTIONS)


def add_data_args(p: argparse.ArgumentParser) -> None:
    _add(p, DATA_OPTIONS)


def add_selection_args(p: argparse.ArgumentParser) -> None:
    _add(p, SELECTION_OPTIONS)


def add_adapter_args(p: argparse.ArgumentParser) -> None:
    _add(p, ADAPTER_FLAGS)


def adapter_from_args(args: argparse.Namespace, pefts: list[str]) -> tuple[list[str], dict]:
    """The adapter methods to build and their ``apply_peft`` keyword arguments, from ``pefts``
    and the ``add_adapter_args`` flags (``--peft-arg`` parsed; ``--peft-config``'s method and
    settings, as ``train`` reads them), checked for every method before anything is measured."""
    from tokenseek.models.adapters import adapter_kwargs, peft_config
    from tokenseek.train.config import TrainConfig, with_peft_file

    given = _adapter_settings(args, ADAPTER_OPTIONS)
    methods, kwargs = list(pefts), adapter_kwargs(argparse.Namespace(**given))
    if args.peft_config:
        # Each method is resolved against the file as train resolves it: the default method becomes
        # the file's, qlora takes a LoRA file, any other mismatch (--peft none alone too) is refused.
        adapters = [method for method in pefts if method != "none"] or ["none"]
        read = {method: with_peft_file(TrainConfig(peft=method, peft_config=args.peft_config, **given)) for method in adapters}
        methods = list(dict.fromkeys(read[method].peft if method in read else method for method in pefts))
        kwargs = adapter_kwargs(read[adapters[0]])
    for method in methods:
        if method != "none":  # full-parameter rows take no adapter settings
            peft_config(method, **kwargs)
    return methods, kwargs


def unread_adapter_args(args: argparse.Namespace, reason: str) -> list[str]:
    """A warning line for each ``add_adapter_args`` flag set away from its default, for a job
    that builds no adapter (``plan --from-bench`` reads the settings the bench ran with)."""
    from tokenseek.train.config import TrainConfig
    from tokenseek.utils.options import ignored

    return ignored(TrainConfig(**_adapter_settings(args, ADAPTER_FLAGS)), dict.fromkeys(ADAPTER_FLAGS, reason))


def _adapter_settings(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The TrainConfig values of the adapter flags ``names`` (``--peft-arg`` pairs as a dict)."""
    given = {name: getattr(args, name) for name in names}
    given["peft_args"] = parse_pairs(args.peft_args, "--peft-arg")
    return given
