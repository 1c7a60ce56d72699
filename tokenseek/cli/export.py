"""``tokenseek export``: a training run as a standalone model (merged) or its adapter."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from tokenseek.cli.config import add_options
    from tokenseek.models.export import ExportConfig

    p = sub.add_parser(
        "export",
        help="write a run's model as a standalone folder (merged full model or adapter)",
        description="Write a `tokenseek train` run's model to a new folder that plain transformers/peft load: with --merge "
        "the adapter is folded into the base model (safetensors + tokenizer), otherwise the adapter (or the full model "
        "of a --peft none run) is copied.",
    )
    add_options(p, ExportConfig, suppress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenseek.cli.config import from_args
    from tokenseek.models.export import ExportConfig, export_run

    done = export_run(from_args(ExportConfig, args))
    print(f"exported the {done['kind']} to {done['out']}" + (f" and pushed it to {done['pushed_to']}" if done["pushed_to"] else ""))
    return 0
