"""``tokenseek train``: flags and YAML keys come from :class:`tokenseek.train.config.TrainConfig`."""

from __future__ import annotations

import argparse
import json

from tokenseek.cli.config import add_options, resolve


def register(sub) -> None:
    from tokenseek.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="fine-tune with token ditching",
        description="Fine-tune a causal LM, back-propagating only the kept tokens. Every option can also be set in a "
        "--config YAML file (key = option name with underscores, or its TrainingArguments name); flags given here win.",
    )
    p.add_argument("--config", help="YAML file with any of these options (flags given on the command line win)")
    add_options(p, TrainConfig)
    p.set_defaults(func=run, parser=p)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig for parsed ``tokenseek train`` arguments (defaults < --config YAML < given flags)."""
    from tokenseek.train.config import TrainConfig, trainer_arg_name

    return resolve(TrainConfig, args, extra=("trainer_args", trainer_arg_name))


def run(args: argparse.Namespace) -> int:
    from tokenseek.train.recipe import run_train

    cfg = config_from_args(args)
    summary = run_train(cfg)
    if summary:
        print(json.dumps({k: summary[k] for k in ("selection", "ratio", "peft", "steps", "first_loss", "final_loss", "wall_time_s")}))
        print(f"saved to {cfg.output_dir}")
    return 0
