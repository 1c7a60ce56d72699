"""Execute a study: sample the data, score once per scoring setting, train and evaluate each cell.

Everything is resumable, at three levels:

- a cell is *finished* when ``<results_dir>/<cell>.json`` exists; finished cells are skipped;
- a score store (``<runs_dir>/scores/<setting>``) resumes from its written shards;
- training resumes from its last checkpoint (``run_train`` does that), a finished training
  (``train_summary.json`` for the same run config) is not redone, and a finished held-out /
  benchmark evaluation is kept in the cell's run directory until the result file is written.

So the job can be stopped at any point (Ctrl-C, kill, a power cut) and rerun with the same
command. Several processes may run the same command side by side (one per free core): each
cell and each score store is locked by the process working on it (``file_lock``, released by
the operating system when that process dies), so the others skip a running cell and wait for
a store being written. Large outputs (models, checkpoints, scores, sampled data) go to ``runs_dir``
(git-ignored); only the small result JSONs go to ``results_dir``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import platform
import subprocess
import time
from collections import deque
from pathlib import Path

from tokenseek.errors import TokenSeekError
from tokenseek.experiment.config import SCORING_KEYS, Cell, Study, eval_identity, short_hash
from tokenseek.train.recipe import TrainConfig, run_train
from tokenseek.utils.io import file_lock, write_json

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- paths
def result_path(study: Study, cell: Cell) -> Path:
    return study.results_dir / f"{cell.name}.json"


def work_spec(study: Study, cell: Cell) -> dict:
    """What a cell's training and evaluation depend on — not its name or label, so cells of
    different studies with the same settings share one run directory (trained once)."""
    params = dict(cell.params)
    if cell.scoring() is None:
        for key in SCORING_KEYS:
            params.pop(key, None)
    return {"train": cell.train, "params": params, "data": study.data_spec()}


def run_dir(study: Study, cell: Cell) -> Path:
    """The cell's work folder: ``train/`` (the run_train output), timings and kept evaluations."""
    return study.runs_dir / "cells" / short_hash(work_spec(study, cell))


def lock_path(folder: Path) -> Path:
    """The lock that says a process works on ``folder``: a hidden sibling, so the folder itself
    stays exactly what its writer expects (a score store refuses a non-empty directory)."""
    return folder.parent / f".{folder.name}.lock"


def train_dir(study: Study, cell: Cell) -> Path:
    return run_dir(study, cell) / "train"


def data_dir(study: Study) -> Path:
    return study.runs_dir / "data" / short_hash(study.data_spec())


def store_dir(study: Study, scoring: dict) -> Path:
    q = scoring["quantize"] or "fp32"
    tag = f"L{scoring['grad_layer']}-{scoring['grad_mode']}-{q}-len{scoring['max_length']}"
    return study.runs_dir / "scores" / f"{tag}-{short_hash({'scoring': scoring, 'data': study.data_spec()})}"


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- data
def sample_data(study: Study) -> dict:
    """Draw the training and held-out samples (seeded) and write them once; returns their paths."""
    import numpy as np

    from tokenseek.data import load_records

    folder = data_dir(study)
    meta_file = folder / "sample.json"
    meta = read_json(meta_file)
    if "generator" in study.data_spec():
        return generate_data(study, folder, meta)
    if meta and meta.get("spec") == study.data_spec() and (folder / "train.json").is_file():
        return meta
    spec = study.data_spec()
    records = load_records(spec["path"], fields=spec["fields"])
    n_train = spec["sample"] if spec["sample"] is not None else len(records) - spec["heldout"]
    if n_train < 1 or n_train + spec["heldout"] > len(records):
        raise TokenSeekError(
            f"{spec['path']} has {len(records)} usable records, too few for data.sample {spec['sample']} + data.heldout {spec['heldout']}"
        )
    order = np.random.default_rng(spec["seed"]).permutation(len(records)).tolist()
    train_idx, held_idx = order[:n_train], order[n_train : n_train + spec["heldout"]]
    train = [records[i] for i in train_idx]
    held = [records[i] for i in held_idx]
    write_json(folder / "train.json", train)
    if held:
        write_json(folder / "heldout.json", held)
    meta = {
        "spec": spec,
        "source_records": len(records),
        "train_file": str(folder / "train.json"),
        "heldout_file": str(folder / "heldout.json") if held else None,
        "train_records": len(train),
        "heldout_records": len(held),
        "train_indices_sha": short_hash(train_idx),
        "heldout_indices_sha": short_hash(held_idx),
    }
    write_json(meta_file, meta)  # last: its presence means both files are complete
    return meta


def generate_data(study: Study, folder: Path, meta: dict | None) -> dict:
    """Write a generator's train and test splits once (the test split is the held-out data).

    Generating is instant, so it is redone on every start and compared with what the study's
    runs were trained on: a generator whose code changed must not silently mix two datasets.
    """
    from tokenseek.data.generators import generate_splits

    spec = study.data_spec()
    train, test = generate_splits(spec["generator"], spec["train"], spec["test"], spec["seed"])
    shas = {"train_sha": short_hash(train), "heldout_sha": short_hash(test)}
    if meta and meta.get("spec") == spec and (folder / "train.json").is_file():
        if {k: meta.get(k) for k in shas} != shas:
            raise TokenSeekError(
                f"the {spec['generator']} generator now writes other records than the ones in {folder} (its code changed): "
                f"delete {folder} and the study's results to start over, or restore the generator"
            )
        return meta
    write_json(folder / "train.json", train)
    if test:
        write_json(folder / "heldout.json", test)
    meta = {
        "spec": spec,
        "source_records": len(train) + len(test),
        "train_file": str(folder / "train.json"),
        "heldout_file": str(folder / "heldout.json") if test else None,
        "train_records": len(train),
        "heldout_records": len(test),
        **shas,
    }
    write_json(folder / "sample.json", meta)  # last: its presence means both files are complete
    return meta


# ----------------------------------------------------------------------------- bookkeeping
@contextlib.contextmanager
def timed(folder: Path, stage: str):
    """Add this stage's wall time to ``folder/timings.json``, also when interrupted."""
    started = time.time()
    try:
        yield
    finally:
        file = folder / "timings.json"
        timings = read_json(file) or {}
        timings[stage] = round(timings.get(stage, 0.0) + time.time() - started, 2)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(file, timings)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tokenseek", "torch", "transformers", "peft", "lm_eval", "datasets", "numpy", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    with contextlib.suppress(Exception):
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
        ).stdout.strip() or None
    return out


def machine() -> dict:
    import os

    import torch

    out = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        from tokenseek.models.placement import default_device

        out["gpu"] = torch.cuda.get_device_name(default_device())
    with contextlib.suppress(OSError):
        out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def train_config(study: Study, cell: Cell, data: dict, scores: Path | None) -> TrainConfig:
    params = {k: v for k, v in cell.params.items() if k not in SCORING_KEYS}
    return TrainConfig(
        **params,
        output_dir=str(train_dir(study, cell)),
        data=data["train_file"],
        heldout=0.0,
        scores=str(scores) if scores else None,
    )


# ----------------------------------------------------------------------------- status
def cell_status(study: Study, cell: Cell) -> str:
    """finished | stale (finished under another config) | trained | training (step N) | todo
    (``run_study`` adds "running" for a cell another process holds)."""
    done = read_json(result_path(study, cell))
    if done is not None:
        return "finished" if is_current(study, cell, done) else "stale"
    folder = train_dir(study, cell)
    if (folder / "train_summary.json").is_file() or not cell.train:
        return "trained" if cell.train else "todo"
    steps = [int(p.name.split("-")[-1]) for p in (folder / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return f"training (checkpoint at step {max(steps)})" if steps else "todo"


def is_current(study: Study, cell: Cell, result: dict) -> bool:
    """Was this result written for the cell, data and evaluation the config asks for now?"""
    same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # noqa: E731
    return (
        same(result.get("cell"), cell.identity())
        and same((result.get("data") or {}).get("spec"), study.data_spec())
        and same(eval_identity(result.get("eval")), eval_identity(study.eval))
    )


# ----------------------------------------------------------------------------- stages
def ensure_scores(study: Study, cell: Cell, data: dict, progress) -> Path | None:
    """The complete score store for the cell's scoring setting (scored now if missing)."""
    setting = cell.scoring()
    if setting is None:
        return None
    folder = store_dir(study, setting)
    # Two runner processes may need the same store at once: one scores, the other waits for it.
    waiting = lambda: progress(f"  waiting for another process to finish scoring {folder}")  # noqa: E731
    with file_lock(lock_path(folder), wait=True, on_wait=waiting):
        meta = read_json(folder / "meta.json")
        if not (meta and meta.get("complete")):
            _score_store(folder, setting, data, progress)
    return folder


def _score_store(folder: Path, setting: dict, data: dict, progress) -> None:
    from tokenseek.data import load_records, tokenize_records
    from tokenseek.models import load_model
    from tokenseek.seeking.store import score_dataset

    progress(f"  scoring {data['train_records']} examples -> {folder} (layer N-{setting['grad_layer']}, {setting['quantize'] or 'fp32'})")
    with timed(folder.parent, folder.name):
        records = load_records(data["train_file"])
        model, tokenizer = load_model(setting["model"], quantize=setting["quantize"])
        tokenized = tokenize_records(
            records, tokenizer, template=setting["template"], max_length=setting["max_length"], train_on_prompt=setting["train_on_prompt"]
        )
        score_dataset(
            model,
            tokenizer,
            tokenized,
            folder,
            model_id=setting["model"],
            batch_size=setting["batch_size"],
            layers_back=setting["grad_layer"],
            grad_mode=setting["grad_mode"],
            progress=False,
        )
        del model
        gc.collect()
    write_json(folder / "setting.json", setting)


def train_cell(study: Study, cell: Cell, data: dict, scores: Path | None, progress) -> dict:
    cfg = train_config(study, cell, data, scores)
    folder = train_dir(study, cell)
    summary = read_json(folder / "train_summary.json")
    same_run = read_json(folder / "run_config.json") == json.loads(json.dumps(cfg.identity()))
    if summary and same_run and (folder / "model").is_dir():
        return summary
    progress(f"  training {cell.name} -> {folder}")
    with timed(run_dir(study, cell), "train"):
        summary = run_train(cfg)
    gc.collect()
    return summary


def selection_stats(cell: Cell, data: dict, scores: Path | None, summary: dict | None) -> dict:
    """How many kept positions carry a training target (the loss is taken at kept positions
    only): a selection that keeps mostly prompt tokens trains on little.

    Runs trained since the training summary reports this carry it there (online seeking
    can only be counted during training); for older ones the selection is recomputed.
    """
    if summary and "kept_targets" in summary:
        tally = summary
    else:
        from tokenseek.data import load_records, tokenize_records
        from tokenseek.experiment.config import effective
        from tokenseek.models import load_tokenizer
        from tokenseek.seeking.store import ScoreStore
        from tokenseek.train.recipe import attach_keep

        p = effective(cell.params)
        tokenizer = load_tokenizer(p["model"])
        tokenized = tokenize_records(
            load_records(data["train_file"]), tokenizer, template=p["template"], max_length=p["max_length"], train_on_prompt=p["train_on_prompt"]
        )
        store = ScoreStore.open(scores, data=tokenized) if scores else None
        tally = attach_keep(tokenized.examples, _selection_config(p), store).summary()
    return {
        "kept_positions": tally["tokens_kept"],
        "kept_positions_with_target": tally["kept_targets"],
        "target_positions": tally["target_positions"],
        "target_fraction_trained": tally["kept_target_share"],
        "examples_without_kept_target": tally["examples_without_kept_target"],
        "examples": tally["examples"],
    }


def _selection_config(params: dict):
    from tokenseek.train.recipe import TrainConfig

    return TrainConfig(**{k: v for k, v in params.items() if k in TrainConfig.field_names()})


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


# ----------------------------------------------------------------------------- the job
def run_cell(study: Study, cell: Cell, data: dict, progress) -> dict:
    started = time.time()
    folder = run_dir(study, cell)
    folder.mkdir(parents=True, exist_ok=True)
    scores = ensure_scores(study, cell, data, progress) if cell.train else None
    summary = train_cell(study, cell, data, scores, progress) if cell.train else None
    stats = selection_stats(cell, data, scores, summary) if cell.train else None
    evals = evaluate_cell(study, cell, data, progress)
    curve = read_json(train_dir(study, cell) / "loss_curve.json") if cell.train else None
    timings = {"train": (read_json(folder / "timings.json") or {}).get("train"), **evals["wall_time_s"]}
    timings = {k: v for k, v in timings.items() if v is not None}
    store_time = None
    if scores is not None:
        store_time = (read_json(scores.parent / "timings.json") or {}).get(scores.name)
    result = {
        "study": study.study,
        "cell": cell.identity(),
        "data": {k: v for k, v in data.items() if k not in ("train_file", "heldout_file")},
        "train_config": train_config(study, cell, data, scores).identity() if cell.train else None,
        "scoring": {**cell.scoring(), "store": str(scores), "store_wall_time_s": store_time} if scores else None,
        "train": summary,
        "selection_stats": stats,
        "loss_curve": curve,
        "heldout": evals.get("heldout"),
        **({"exact_match": evals["exact_match"]} if "exact_match" in evals else {}),
        "benchmarks": evals.get("benchmarks"),
        "eval": study.eval,
        # Summed over all attempts (a resumed stage adds up); scoring is per store, in "scoring".
        "wall_time_s": {**timings, "total": round(sum(timings.values()), 2), "this_attempt": round(time.time() - started, 2)},
        "versions": versions(),
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(result_path(study, cell), result)
    return result


RUNNING_ELSEWHERE = "running"  # another process holds the cell's lock


def run_study(study: Study, only: list[str] | None = None, *, dry_run: bool = False, progress=print) -> dict:
    """Run every (selected) cell that is not finished; returns ``{cell name: status}``."""
    cells = study.select(only)
    statuses = {c.name: cell_status(study, c) for c in cells}
    if dry_run:
        return _show_plan(study, cells, statuses, progress)
    todo = [c for c in cells if statuses[c.name] not in ("finished", "stale")]
    for c in cells:
        if statuses[c.name] == "stale":
            progress(
                f"  {c.name}: its result file was written for another configuration (cell, data or eval settings); "
                f"delete {result_path(study, c)} to rerun it (finished training and evaluations are reused)"
            )
    if not todo:
        progress(f"study {study.study}: all {len(cells)} selected cell(s) finished; nothing to run")
        return statuses
    progress(f"study {study.study}: {len(todo)} of {len(cells)} cell(s) to run")
    data = sample_data(study)
    queue, told = deque(todo), set()
    for i in range(1, len(todo) + 1):
        c = _next_cell(study, queue, told, progress)
        # Several runner processes may work on one study (or on studies sharing runs): each
        # cell is run by whichever takes its lock first; the others move on to the next cell.
        with file_lock(lock_path(run_dir(study, c)), wait=False) as mine:
            status = cell_status(study, c) if mine else RUNNING_ELSEWHERE
            if status in ("finished", "stale", RUNNING_ELSEWHERE):
                progress(f"[{i}/{len(todo)}] {c.name}: {status} in another process; skipped")
                statuses[c.name] = status
                continue
            progress(f"[{i}/{len(todo)}] {c.name} ({status})")
            started = time.time()
            result = run_cell(study, c, data, progress)
        held = (result.get("heldout") or {}).get("loss")
        em = (result.get("exact_match") or {}).get("accuracy")
        progress(
            f"  done in {time.time() - started:.0f} s"
            + (f"; held-out loss {held:.4f}" if held is not None else "")
            + (f"; exact match {100 * em:.1f}%" if em is not None else "")
        )
        statuses[c.name] = "finished"
    return statuses


def _show_plan(study: Study, cells: list[Cell], statuses: dict, progress) -> dict:
    """``--dry-run``: each cell's state (running in another process included), what it would
    run and with which score store, and the time left; runs nothing."""
    for c in cells:
        with file_lock(lock_path(run_dir(study, c)), wait=False) as free:
            if not free:
                statuses[c.name] = f"{RUNNING_ELSEWHERE}, {statuses[c.name]}"
    progress(f"study {study.study}: {len(cells)} cell(s); results -> {study.results_dir}, runs -> {study.runs_dir}")
    for c in cells:
        setting = c.scoring()
        store = f" scores {store_dir(study, setting).name}" if setting else ""
        what = _describe(c) if c.train else f"evaluate {'NF4 ' if c.quantize else ''}base model"
        progress(f"  {c.name:<40} {statuses[c.name]:<28} {what}{store}")
    estimate = remaining_estimate(study, cells, statuses)
    if estimate:
        progress(estimate)
    return statuses


def remaining_estimate(study: Study, cells: list[Cell], statuses: dict) -> str | None:
    """How long the unfinished trained cells may take, from the finished ones' measured wall
    time (training + evaluation, as run here: shared cores and pauses included)."""
    measured = []
    for c in cells:
        if c.train and statuses[c.name] == "finished":
            total = ((read_json(result_path(study, c)) or {}).get("wall_time_s") or {}).get("total")
            if total:
                measured.append(total)
    left = [c for c in cells if c.train and statuses[c.name] not in ("finished", "stale")]
    if not measured or not left:
        return None
    mean = sum(measured) / len(measured)
    return (
        f"{len(left)} trained cell(s) left; the {len(measured)} finished took {mean / 60:.0f} min each on average "
        f"(wall time as measured) -> about {len(left) * mean / 3600:.1f} h in one process (score stores not counted)"
    )


def _next_cell(study: Study, queue: deque, told: set, progress) -> Cell:
    """The next cell to run: a cell whose score store another process is still writing goes
    behind the others (scoring a store takes as long as training a cell), unless only such
    cells are left; then it is taken and waits for the store."""
    for _ in range(len(queue)):
        cell = queue.popleft()
        if not _store_busy(study, cell):
            return cell
        if cell.name not in told:
            progress(f"  {cell.name}: its score store is being written by another process; running other cells first")
            told.add(cell.name)
        queue.append(cell)
    return queue.popleft()


def _store_busy(study: Study, cell: Cell) -> bool:
    """Whether the cell needs a score store that is unfinished and locked by another process."""
    setting = cell.scoring()
    if setting is None:
        return False
    folder = store_dir(study, setting)
    meta = read_json(folder / "meta.json")
    if meta and meta.get("complete"):
        return False
    with file_lock(lock_path(folder), wait=False) as free:
        return not free


def _describe(cell: Cell) -> str:
    from tokenseek.experiment.config import effective

    p = effective(cell.params)
    sel = p.get("selection")
    parts = [str(p.get("peft")), str(sel)]
    if sel != "full":
        parts.append(f"{100 * p.get('ratio', 0):g}% of {p.get('select_from')}")
    if sel in ("tokenseek", "probe", "mixed"):
        parts.append(f"a={p.get('alpha'):g} b={p.get('beta'):g}")
    if cell.scoring():
        parts.append(f"N-{p['grad_layer']}")
    elif p.get("seeking") == "online" and sel in ("tokenseek", "probe", "mixed"):
        parts.append("online (scored in each step)")
    parts.append(f"seed {p.get('seed', 0)}")
    return " ".join(parts)
