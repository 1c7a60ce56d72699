"""A cell's evaluations: held-out loss and exact match per example (so two cells can be
compared pairwise) and lm-eval tasks, each kept in the cell's run folder once done."""

from __future__ import annotations

import gc
import math
from pathlib import Path

from tokenseek.errors import TokenSeekError
from tokenseek.experiment.cells import read_json, run_dir, timed, train_dir
from tokenseek.experiment.config import Cell, Study, short_hash
from tokenseek.utils.io import write_json


def evaluate_cell(study: Study, cell: Cell, data: dict, progress) -> dict:
    """Held-out loss and exact match (per example, so pairs of cells can be compared) and lm-eval
    tasks; each is kept in the cell's run folder and reused by any later run of the cell."""
    folder = run_dir(study, cell)
    files = _evaluation_files(study)
    missing = {kind: name for kind, name in files.items() if read_json(folder / name) is None}
    if missing:
        _run_evaluations(study, cell, data, missing, progress)
        gc.collect()  # the model it loaded, before the next cell loads its own
    timings = read_json(folder / "timings.json") or {}
    out: dict = {"wall_time_s": {_TIMING_KEYS[kind]: timings.get(_stage(name)) for kind, name in files.items()}}
    out.update({kind: read_json(folder / name) for kind, name in files.items()})
    return out


# The cell result's key for each evaluation's wall time.
_TIMING_KEYS = {"heldout": "eval_heldout", "exact_match": "eval_exact_match", "benchmarks": "eval_tasks"}


def _evaluation_files(study: Study) -> dict[str, str]:
    """The study's evaluations and the file each is kept in, named by its settings (the run
    folder already fixes model and data), in the order they run."""
    ev = study.eval
    files = {}
    if ev["heldout"]:
        files["heldout"] = f"eval_heldout-{short_hash({'limit': ev['heldout_limit']})}.json"
    if ev["exact_match"]:
        files["exact_match"] = f"eval_exact_match-{short_hash({k: ev[k] for k in ('exact_match_limit', 'exact_match_max_new_tokens')})}.json"
    if ev["tasks"]:
        files["benchmarks"] = f"eval_tasks-{short_hash({k: ev[k] for k in ('tasks', 'limit', 'num_fewshot', 'data_dir')})}.json"
    return files


def _stage(file_name: str) -> str:
    return file_name[: -len(".json")]


def _run_evaluations(study: Study, cell: Cell, data: dict, todo: dict[str, str], progress) -> None:
    """Load the cell's model once and run the evaluations in ``todo`` (kind -> file), each timed."""
    from tokenseek.eval.model import load_for_eval

    ev, folder = study.eval, run_dir(study, cell)
    selection = None
    if "benchmarks" in todo:  # before the slow model load: a missing task file fails fast
        from tokenseek.eval.harness import select_tasks

        selection = select_tasks(ev["tasks"], data_dir=ev["data_dir"], limit=ev["limit"], num_fewshot=ev["num_fewshot"])
    if cell.train:
        model, tokenizer, info = load_for_eval(str(train_dir(study, cell)))  # a QLoRA run is found to be one
    else:
        model, tokenizer, info = load_for_eval(cell.params.get("model"), quantize=cell.quantize)

    def benchmarks() -> dict:
        from tokenseek.eval.harness import evaluate_tasks

        return evaluate_tasks(model, tokenizer, selection, batch_size=ev["batch_size"])

    jobs = {
        "heldout": (f"held-out loss of {cell.name}", lambda: heldout_per_example(model, tokenizer, study, cell, data)),
        "exact_match": (f"exact match of greedy answers of {cell.name}", lambda: exact_match_records(model, tokenizer, study, cell, data)),
        "benchmarks": (f"lm-eval {', '.join(ev['tasks'] or [])} (limit {ev['limit']}) on {cell.name}", benchmarks),
    }
    for kind, name in todo.items():
        label, run = jobs[kind]
        progress(f"  {label}")
        with timed(folder, _stage(name)):
            write_json(folder / name, {**run(), "loaded": info})


def exact_match_records(model, tokenizer, study: Study, cell: Cell, data: dict) -> dict:
    """Exact match of greedy answers on the held-out records, with a per-task breakdown when
    the records name their task (generated data does)."""
    from tokenseek.data import load_records
    from tokenseek.eval.exact_match import exact_match

    ev = study.eval
    records = load_records(data["heldout_file"], limit=ev["exact_match_limit"])
    raw = (read_json(Path(data["heldout_file"])) or [])[: len(records)]
    # load_records drops records without an answer; the raw task names line up only if none was dropped.
    aligned = len(raw) == len(records) and all(isinstance(r, dict) and "task" in r and r.get("output") == x["output"] for r, x in zip(raw, records))
    return exact_match(
        model,
        tokenizer,
        records,
        template=cell.params.get("template", "alpaca"),
        max_new_tokens=ev["exact_match_max_new_tokens"],
        batch_size=ev["batch_size"],
        tasks=[r["task"] for r in raw] if aligned else None,
    )


def heldout_per_example(model, tokenizer, study: Study, cell: Cell, data: dict) -> dict:
    """``heldout_loss`` record by record: the token-weighted total equals one call on all
    records, and the per-example values give paired standard errors between cells."""
    from tokenseek.data import load_records
    from tokenseek.eval.heldout import heldout_loss

    records = load_records(data["heldout_file"], limit=study.eval["heldout_limit"])
    template = cell.params.get("template", "alpaca")
    max_length = cell.params.get("max_length", 512)
    losses, tokens, skipped = [], [], 0
    for record in records:
        try:
            r = heldout_loss(model, tokenizer, [record], template=template, max_length=max_length, batch_size=1)
        except TokenSeekError:  # no response token left within max_length
            skipped += 1
            losses.append(None)
            tokens.append(0)
            continue
        losses.append(r["loss"])
        tokens.append(r["tokens"])
    total = sum(t for t in tokens)
    loss = sum(l * t for l, t in zip(losses, tokens) if l is not None) / max(total, 1)
    return {
        "records": len(records),
        "examples": len(records) - skipped,
        "tokens": total,
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "template": template,
        "max_length": max_length,
        "per_example_loss": [None if l is None else round(l, 6) for l in losses],
        "per_example_tokens": tokens,
    }
