"""``tokenseek eval``: few-shot benchmarks (lm-eval, local data) and held-out loss."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path

from tokenseek.cli.common import add_model_args
from tokenseek.errors import TokenSeekError


def register(sub) -> None:
    from tokenseek.eval.catalog import DATA_ENV, DEFAULT_TASKS

    p = sub.add_parser(
        "eval",
        help="benchmark a model (paper's few-shot tasks) and/or its held-out loss",
        description=(
            "Evaluate a base model, a fine-tuned model folder, a training run's output folder or a PEFT adapter "
            "on the paper's few-shot benchmarks with lm-evaluation-harness (local data), and/or measure held-out loss."
        ),
    )
    add_model_args(p)
    p.add_argument("--adapter", help="PEFT adapter folder (or training output folder) to put on --model")
    p.add_argument("--quantize", choices=["nf4"], help="load the base model in 4-bit NF4 (automatic for a QLoRA run's adapter)")
    p.add_argument(
        "--tasks",
        help=f"comma-separated tasks; 'paper' = the five paper tasks (default: {','.join(DEFAULT_TASKS)}, or none with --heldout)",
    )
    p.add_argument("--limit", type=int, help="at most N items per task (groups split N over subtasks) / N held-out records")
    p.add_argument("--num-fewshot", help="shots for all tasks that are not 0-shot by design (e.g. 5), or per task: arc_challenge=0,mmlu=5")
    p.add_argument("--data-dir", help=f"folder with the benchmark files (default: ${DATA_ENV}, else ../shared/data/eval)")
    p.add_argument("--include-path", action="append", help="extra folder of lm-eval task YAMLs (repeatable)")
    p.add_argument("--hub", action="store_true", help="use lm-eval's own (Hub) tasks for the paper names instead of the local files")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument(
        "--lm-eval-model",
        choices=["tokenseek-prefix", "hf"],
        default="tokenseek-prefix",
        help="tokenseek-prefix (default): each shared few-shot context runs once, same log-likelihoods as hf; hf: lm-eval's plain HFLM",
    )
    p.add_argument("--output", help="write results JSON here (and the tables as .md next to it)")
    p.add_argument("--heldout", help="held-out data (.json/.jsonl/.csv/.parquet, e.g. a run's heldout.json): report response-token loss")
    p.add_argument("--fields", help="column mapping for --heldout, e.g. instruction=question,output=answer")
    p.add_argument("--template", choices=["alpaca", "chat"], default="alpaca", help="prompt template for --heldout (default: alpaca)")
    p.add_argument("--max-length", type=int, default=512, help="truncate --heldout examples to this many tokens (default: 512)")
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
    from tokenseek.eval.model import load_for_eval
    from tokenseek.eval.report import render
    from tokenseek.utils.io import write_json, write_text

    started = time.time()
    tasks = args.tasks if args.tasks is not None or not args.heldout else ""
    if tasks == "" and not args.heldout:
        raise TokenSeekError("nothing to evaluate: give --tasks (e.g. paper) and/or --heldout DATA")
    num_fewshot = parse_num_fewshot(args.num_fewshot)
    if args.batch_size < 1:
        raise TokenSeekError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise TokenSeekError(f"--limit must be at least 1, got {args.limit}")
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

    model, tokenizer, info = load_for_eval(args.model, args.adapter, args.quantize)
    results: dict = {**info}
    if selection is not None:
        from tokenseek.eval.harness import evaluate_tasks

        results.update(evaluate_tasks(model, tokenizer, selection, batch_size=args.batch_size, lm_eval_model=args.lm_eval_model, verbose=args.verbose))
    if records is not None:
        from tokenseek.eval.heldout import heldout_loss

        held = heldout_loss(model, tokenizer, records, template=args.template, max_length=args.max_length, batch_size=args.batch_size)
        results["heldout"] = {"data": args.heldout, **held}
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
        print(json.dumps({k: v for k, v in results.items() if k not in ("tasks", "table_markdown")}))
    return 0


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
