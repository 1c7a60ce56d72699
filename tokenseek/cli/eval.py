"""``tokenseek eval``: few-shot benchmarks (lm-eval, local data), held-out loss and exact match."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging

from tokenseek.cli.common import add_dtype_arg, add_model_args


def register(sub) -> None:
    from tokenseek.cli.config import add_options
    from tokenseek.eval.config import EvalConfig
    from tokenseek.train.config import TrainConfig

    p = sub.add_parser(
        "eval",
        help="benchmark a model (paper's few-shot tasks) and/or its held-out loss and exact match",
        description=(
            "Evaluate a base model, a fine-tuned model folder, a training run's output folder or a PEFT adapter "
            "on the paper's few-shot benchmarks with lm-evaluation-harness (local data), and/or measure held-out loss "
            "and the exact match of its greedy answers."
        ),
    )
    add_model_args(p)
    add_options(p, EvalConfig, suppress=False)
    # How --heldout records become examples: the same options, defaults and help as `tokenseek train`.
    add_options(p, TrainConfig, only=("fields", "template", "max_length"), suppress=False)
    add_dtype_arg(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.cli.config import from_args
    from tokenseek.eval.config import EvalConfig
    from tokenseek.eval.job import run_eval

    shared = {name: getattr(args, name) for name in ("model", "dtype", "fields", "template", "max_length")}
    cfg = from_args(EvalConfig, args, **shared)
    with _quiet_loading(args.verbose):
        results = run_eval(cfg, verbose=args.verbose)
    print(results["table_markdown"])
    print(f"saved to {cfg.output}" if cfg.output else json.dumps(_summary(results)))
    return 0


def _summary(results: dict) -> dict:
    """What stdout's JSON line shows: no per-task or per-example lists (--output has them)."""
    out = {k: v for k, v in results.items() if k not in ("tasks", "table_markdown")}
    if "exact_match" in out:
        out["exact_match"] = {k: v for k, v in out["exact_match"].items() if k not in ("per_example_correct", "answers")}
    return out


@contextlib.contextmanager
def _quiet_loading(verbose: bool):
    """Keep stderr for errors and lm-eval's progress: no weight-loading bars, no
    harmless bitsandbytes "kernels-community" warning and no per-retry Hub
    connection warnings (a failed Hub task still ends in one error line) unless -v.
    Restores everything afterwards (``main`` may run in-process, e.g. in tests)."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "huggingface_hub", "datasets")]
    levels = [log.level for log in loggers]
    hf_logging.disable_progress_bar()
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        for log, level in zip(loggers, levels):
            log.setLevel(level)
