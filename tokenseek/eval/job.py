"""One evaluation job, the library side of ``tokenseek eval``: benchmarks, held-out loss and
exact match of one model, in the order that fails fast (inputs are checked before the slow
model load, answer budgets before any slow pass)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tokenseek.errors import TokenSeekError
from tokenseek.eval.config import EvalConfig

logger = logging.getLogger(__name__)


def run_eval(cfg: EvalConfig, *, verbose: bool = False) -> dict:
    """Evaluate ``cfg.model`` (with ``cfg.adapter``) and return the results; with ``cfg.output``
    also write them (JSON, and the table as Markdown next to it). ``results["table_markdown"]``
    is the table the CLI prints."""
    started = time.time()
    for line in cfg.ignored_options():
        logger.warning(line)
    selection = _select_benchmarks(cfg, verbose)
    records = _heldout_records(cfg)

    from tokenseek.eval.model import load_for_eval

    model, tokenizer, info = load_for_eval(cfg.model, cfg.adapter, cfg.quantize, cfg.dtype)
    if cfg.exact_match:
        from tokenseek.eval.exact_match import check_answer_budget

        check_answer_budget(tokenizer, records, cfg.max_new_tokens, "--max-new-tokens")
    results: dict = {**info}
    if selection is not None:
        from tokenseek.eval.harness import evaluate_tasks

        results.update(evaluate_tasks(model, tokenizer, selection, batch_size=cfg.batch_size, lm_eval_model=cfg.lm_eval_model, verbose=verbose))
    if records is not None:
        results["heldout"] = {"data": cfg.heldout, **_heldout_loss(cfg, model, tokenizer, records)}
    if cfg.exact_match:
        results["exact_match"] = {"data": cfg.heldout, **_exact_match(cfg, model, tokenizer, records)}
    results["wall_time_s"] = round(time.time() - started, 2)
    _write_outputs(cfg, results, label=result_label(info))
    return results


def _select_benchmarks(cfg: EvalConfig, verbose: bool):
    """The lm-eval tasks to run (names, data files and shots checked), or None for none."""
    tasks = cfg.benchmark_tasks
    if tasks == "" and not cfg.heldout:
        raise TokenSeekError("nothing to evaluate: give --tasks (e.g. paper) and/or --heldout DATA")
    if tasks == "":
        return None
    from tokenseek.eval.harness import select_tasks

    return select_tasks(
        tasks,
        data_dir=cfg.data_dir,
        limit=cfg.limit,
        num_fewshot=parse_num_fewshot(cfg.num_fewshot),
        include_path=cfg.include_path,
        hub=cfg.hub,
        verbose=verbose,
    )


def parse_num_fewshot(text: str | None) -> int | dict[str, int] | None:
    """``--num-fewshot``: one number for every task, or ``task=number`` pairs."""
    if text is None or text == "":
        return None
    try:
        if "=" not in text:
            return int(text)
        pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise TokenSeekError(f"--num-fewshot {text!r} is neither a number nor task=number pairs, e.g. 5 or arc_challenge=0,hellaswag=10") from None


def _heldout_records(cfg: EvalConfig) -> list[dict] | None:
    """The ``--heldout`` records, or None; ``--exact-match`` needs Alpaca records to compare with."""
    if not cfg.heldout:
        if cfg.exact_match:
            raise TokenSeekError("--exact-match compares answers with held-out records: give --heldout DATA")
        return None
    from tokenseek.data import load_records
    from tokenseek.data.formats import record_format

    records = load_records(cfg.heldout, fields=cfg.fields, limit=cfg.limit)
    formats = sorted({record_format(r) for r in records})
    if cfg.exact_match and formats != ["alpaca"]:
        raise TokenSeekError(
            f"--exact-match needs Alpaca records (instruction, optional input, output); {cfg.heldout} has {', '.join(formats)} records"
        )
    return records


def _heldout_loss(cfg: EvalConfig, model, tokenizer, records: list[dict]) -> dict:
    from tokenseek.eval.heldout import heldout_loss

    return heldout_loss(model, tokenizer, records, template=cfg.template, max_length=cfg.max_length, batch_size=cfg.batch_size, progress=True)


def _exact_match(cfg: EvalConfig, model, tokenizer, records: list[dict]) -> dict:
    from tokenseek.eval.exact_match import exact_match

    return exact_match(
        model, tokenizer, records, template=cfg.template, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        budget_setting="--max-new-tokens", progress=True,
    )


def _write_outputs(cfg: EvalConfig, results: dict, *, label: str) -> None:
    from tokenseek.eval.report import render
    from tokenseek.utils.io import write_json, write_text

    results["table_markdown"] = render(results, label=label)
    if cfg.output:
        write_json(cfg.output, results)
        write_text(Path(cfg.output).with_suffix(".md"), results["table_markdown"] + "\n")


def result_label(info: dict) -> str:
    """Row label: the run folder for RUN/model, else the adapter's or model's folder name."""
    path = Path(str(info["adapter"] or info["model"]))
    return path.parent.name if path.name == "model" and path.parent.name else path.name
