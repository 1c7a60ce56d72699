"""``tokenseek eval``: few-shot benchmarks (lm-eval, local data), held-out loss and exact match."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path

from tokenseek.cli.common import add_dtype_arg, add_model_args
from tokenseek.errors import TokenSeekError


def register(sub) -> None:
    from tokenseek.cli.config import add_options
    from tokenseek.eval.config import EvalConfig
    from tokenseek.train.recipe import TrainConfig

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


def parse_num_fewshot(text: str | None) -> int | dict[str, int] | None:
    if text is None or text == "":
        return None
    try:
        if "=" not in text:
            return int(text)
        pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise TokenSeekError(f"--num-fewshot {text!r} is neither a number nor task=number pairs, e.g. 5 or arc_challenge=0,hellaswag=10") from None


def run(args: argparse.Namespace) -> int:
    with _quiet_loading(args.verbose):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tokenseek.cli.config import from_args
    from tokenseek.eval.config import EvalConfig
    from tokenseek.eval.model import load_for_eval
    from tokenseek.eval.report import render
    from tokenseek.utils.io import write_json, write_text

    from_args(EvalConfig, args)  # checks its choices and ranges
    started = time.time()
    tasks = args.tasks if args.tasks is not None or not args.heldout else ""
    if tasks == "" and not args.heldout:
        raise TokenSeekError("nothing to evaluate: give --tasks (e.g. paper) and/or --heldout DATA")
    num_fewshot = parse_num_fewshot(args.num_fewshot)
    selection = None
    if tasks != "":
        from tokenseek.eval.harness import select_tasks

        # Names, data files and shots are checked before the (slow) model load.
        selection = select_tasks(
            tasks,
            data_dir=args.data_dir,
            limit=args.limit,
            num_fewshot=num_fewshot,
            include_path=args.include_path,
            hub=args.hub,
            verbose=args.verbose,
        )
    records = None
    if args.heldout:
        from tokenseek.data import load_records

        records = load_records(args.heldout, fields=args.fields, limit=args.limit)  # before the slow model load
    if args.exact_match:
        _check_exact_match(args, records)

    model, tokenizer, info = load_for_eval(args.model, args.adapter, args.quantize, args.dtype)
    if args.exact_match:
        from tokenseek.eval.exact_match import check_answer_budget

        check_answer_budget(tokenizer, records, args.max_new_tokens, "--max-new-tokens")  # before any slow pass
    results: dict = {**info}
    if selection is not None:
        from tokenseek.eval.harness import evaluate_tasks

        results.update(evaluate_tasks(model, tokenizer, selection, batch_size=args.batch_size, lm_eval_model=args.lm_eval_model, verbose=args.verbose))
    if records is not None:
        from tokenseek.eval.heldout import heldout_loss

        held = heldout_loss(
            model, tokenizer, records, template=args.template, max_length=args.max_length, batch_size=args.batch_size, progress=True
        )
        results["heldout"] = {"data": args.heldout, **held}
    if args.exact_match:
        from tokenseek.eval.exact_match import exact_match

        em = exact_match(
            model, tokenizer, records, template=args.template, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            budget_setting="--max-new-tokens", progress=True,
        )
        results["exact_match"] = {"data": args.heldout, **em}
    results["wall_time_s"] = round(time.time() - started, 2)

    label = _label(info)
    text = render(results, label=label)
    results["table_markdown"] = text
    print(text)
    if args.output:
        write_json(args.output, results)
        write_text(Path(args.output).with_suffix(".md"), text + "\n")
        print(f"saved to {args.output}")
    else:
        print(json.dumps(_summary(results)))
    return 0


def _check_exact_match(args: argparse.Namespace, records: list[dict] | None) -> None:
    """Refuse --exact-match without answers to compare with, before the slow model load."""
    from tokenseek.data.formats import record_format

    if records is None:
        raise TokenSeekError("--exact-match compares answers with held-out records: give --heldout DATA")
    formats = sorted({record_format(r) for r in records})
    if formats != ["alpaca"]:
        raise TokenSeekError(
            f"--exact-match needs Alpaca records (instruction, optional input, output); {args.heldout} has {', '.join(formats)} records"
        )


def _summary(results: dict) -> dict:
    """What stdout's JSON line shows: no per-task or per-example lists (--output has them)."""
    out = {k: v for k, v in results.items() if k not in ("tasks", "table_markdown")}
    if "exact_match" in out:
        out["exact_match"] = {k: v for k, v in out["exact_match"].items() if k not in ("per_example_correct", "answers")}
    return out


def _label(info: dict) -> str:
    """Row label: the run folder for RUN/model, else the adapter's or model's folder name."""
    path = Path(str(info["adapter"] or info["model"]))
    return path.parent.name if path.name == "model" and path.parent.name else path.name


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
