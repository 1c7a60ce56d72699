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
import logging
import platform
import subprocess
import time
from collections import deque
from pathlib import Path

from tokenseek.experiment.cells import (
    cell_status,
    lock_path,
    read_json,
    result_path,
    run_dir,
    shared_result,
    shared_results,
    store_dir,
    timed,
    train_dir,
)
from tokenseek.experiment.config import SCORING_KEYS, Cell, Study
from tokenseek.experiment.data import sample_data
from tokenseek.experiment.evaluate import evaluate_cell
from tokenseek.train.config import TrainConfig
from tokenseek.train.recipe import run_train
from tokenseek.utils.io import file_lock, write_json

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- bookkeeping
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
    from tokenseek.models import load_model
    from tokenseek.seeking.store import score_dataset

    progress(f"  scoring {data['train_records']} examples -> {folder} (layer N-{setting['grad_layer']}, {setting['quantize'] or 'fp32'})")
    with timed(folder.parent, folder.name):
        model, tokenizer = load_model(setting["model"], quantize=setting["quantize"])
        tokenized = _training_data(data, setting, tokenizer)
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


def _training_data(data: dict, settings: dict, tokenizer):
    """The study's training records tokenized as ``settings`` (a cell's parameters or a scoring
    setting: template, max_length, train_on_prompt) say, as the cell's training tokenizes them."""
    from tokenseek.data import load_records, tokenize_records

    return tokenize_records(
        load_records(data["train_file"]), tokenizer,
        template=settings["template"], max_length=settings["max_length"], train_on_prompt=settings["train_on_prompt"],
    )


def train_cell(study: Study, cell: Cell, data: dict, scores: Path | None, progress) -> dict:
    cfg = train_config(study, cell, data, scores)
    folder = train_dir(study, cell)
    summary = read_json(folder / "train_summary.json")
    recorded = read_json(folder / "run_config.json")
    same_run = isinstance(recorded, dict) and not cfg.changes_from(recorded)
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
    can only be counted during training); for older ones the offline selection is recomputed.
    Online runs trained before the answer position was counted report it as None.
    """
    from tokenseek.experiment.config import effective

    p = effective(cell.params)
    if summary and "kept_targets" in summary and ("kept_target_answer_position" in summary or p["seeking"] == "online"):
        tally = {"kept_target_answer_position": None, **summary}
    else:
        from tokenseek.models import load_tokenizer
        from tokenseek.seeking.store import ScoreStore
        from tokenseek.train.recipe import attach_keep

        tokenizer = load_tokenizer(p["model"])
        tokenized = _training_data(data, p, tokenizer)
        store = ScoreStore.open(scores, data=tokenized) if scores else None
        tally = attach_keep(tokenized.examples, _selection_config(p), store).summary()
    return {
        "kept_positions": tally["tokens_kept"],
        "kept_positions_with_target": tally["kept_targets"],
        "target_positions": tally["target_positions"],
        "target_fraction_trained": tally["kept_target_share"],
        "kept_target_answer_position": tally["kept_target_answer_position"],
        "examples_without_kept_target": tally["examples_without_kept_target"],
        "examples": tally["examples"],
    }


def _selection_config(params: dict):
    from tokenseek.train.config import TrainConfig

    return TrainConfig(**{k: v for k, v in params.items() if k in TrainConfig.field_names()})


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


def _status(study: Study, cell: Cell, shared: dict[str, Path]) -> str:
    """``cell_status``, or "shared (STUDY)" for an unfinished cell whose run another study's
    result file reports (reused, not run again)."""
    status = cell_status(study, cell)
    donor = shared_result(study, cell, shared) if status not in ("finished", "stale") else None
    return f"shared ({donor.parent.name})" if donor else status


def reuse_result(study: Study, cell: Cell, donor: Path) -> dict:
    """This cell's result from another study's file for the same run (same training, data and
    evaluation settings): its numbers as they are, under this study's name and cell, with
    ``shared_from`` saying where they came from."""
    result = read_json(donor)
    origin = result.get("shared_from") or f"{donor.parent.name}/{donor.name}"  # the study that ran it
    result = {**result, "study": study.study, "cell": cell.identity(), "shared_from": origin}
    write_json(result_path(study, cell), result)
    return result


def run_study(study: Study, only: list[str] | None = None, *, dry_run: bool = False, progress=print) -> dict:
    """Run every (selected) cell that is not finished; returns ``{cell name: status}``."""
    cells = study.select(only)
    shared = shared_results(study)
    statuses = {c.name: _status(study, c, shared) for c in cells}
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
            status = _status(study, c, shared) if mine else RUNNING_ELSEWHERE
            if status in ("finished", "stale", RUNNING_ELSEWHERE):
                progress(f"[{i}/{len(todo)}] {c.name}: {status} in another process; skipped")
                statuses[c.name] = status
                continue
            progress(f"[{i}/{len(todo)}] {c.name} ({status})")
            started = time.time()
            donor = shared_result(study, c, shared)
            result = reuse_result(study, c, donor) if donor else run_cell(study, c, data, progress)
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
    left = [c for c in cells if c.train and statuses[c.name] not in ("finished", "stale") and "shared" not in statuses[c.name]]
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
