"""Where a study cell's files live, and what state a cell is in.

Large outputs (models, checkpoints, score stores, sampled data) go under the study's
``runs_dir``, in folders named by a hash of what they depend on, so cells of different studies
with the same settings share them; the small per-cell result JSON goes to ``results_dir``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from tokenseek.experiment.config import SCORING_KEYS, Cell, Study, eval_identity, short_hash
from tokenseek.utils.io import write_json


def result_path(study: Study, cell: Cell) -> Path:
    return study.results_dir / f"{cell.name}.json"


def work_spec(study: Study, cell: Cell) -> dict:
    """What a cell's training and evaluation depend on — not its name or label, so cells of
    different studies with the same settings share one run directory (trained once)."""
    return _work(cell, study.data_spec())


def _work(cell: Cell, data_spec: dict) -> dict:
    params = dict(cell.params)
    if cell.scoring() is None:
        for key in SCORING_KEYS:
            params.pop(key, None)
    return {"train": cell.train, "params": params, "data": data_spec}


def _shared_key(work: dict, evaluation: dict | None) -> str:
    return json.dumps({"work": work, "eval": eval_identity(evaluation)}, sort_keys=True, default=str)


def shared_results(study: Study) -> dict[str, Path]:
    """The result files of the other studies (siblings of ``study.results_dir``), by the work
    and evaluation they report. A cell of ``study`` with the same key would train and evaluate
    exactly that run again; ``shared_result`` finds it so the runner reuses the file instead.
    (Run folders are shared too, but they stay on the machine that made them; result files
    are committed.)"""
    originals: dict[str, Path] = {}
    copies: dict[str, Path] = {}
    for path in sorted(study.results_dir.parent.glob("*/*.json")):
        if path.parent == study.results_dir:
            continue
        result = read_json(path)
        identity = result.get("cell") if isinstance(result, dict) else None
        spec = (result.get("data") or {}).get("spec") if isinstance(result, dict) else None
        if not isinstance(identity, dict) or spec is None or "params" not in identity:
            continue
        donor = Cell(name=identity["name"], label=identity.get("label", ""), params=identity["params"], train=identity.get("train", True))
        found = copies if result.get("shared_from") else originals  # the study that ran it, where there is one
        found.setdefault(_shared_key(_work(donor, spec), result.get("eval")), path)
    return {**copies, **originals}


def shared_result(study: Study, cell: Cell, index: dict[str, Path]) -> Path | None:
    """Another study's result file for this cell's work and evaluation settings, if any."""
    return index.get(_shared_key(work_spec(study, cell), study.eval))


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
