"""Training runs for the loss-curve chart: ``loss_curve.json`` plus a label from ``train_summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from tokenseek.errors import TokenSeekError


def run_label(summary: dict | None, fallback: str) -> str:
    """``tokenseek 10% lora``-style label from a train summary, or ``fallback`` (the dir name)."""
    if not summary or not summary.get("selection"):
        return fallback
    parts = [str(summary["selection"])]
    ratio = summary.get("ratio")
    if summary["selection"] != "full" and isinstance(ratio, (int, float)):
        parts.append(f"{100 * ratio:g}%")
    peft = summary.get("peft")
    parts.append("full-param" if peft in (None, "none") else str(peft))
    return " ".join(parts)


def load_run(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise TokenSeekError(f"run directory not found: {path} (give directories written by `tokenseek train --output-dir`)")
    curve_file = path / "loss_curve.json"
    if not curve_file.is_file():
        raise TokenSeekError(f"{path} has no loss_curve.json: give a directory written by a finished `tokenseek train --output-dir` run")
    try:
        curve = json.loads(curve_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenSeekError(f"{curve_file} is not valid JSON ({exc}): rerun the training or remove this run from --runs") from None
    if not isinstance(curve, list) or not all(isinstance(p, dict) and "step" in p and "loss" in p for p in curve):
        raise TokenSeekError(f"{curve_file} is not a list of {{step, loss}} points: give a directory written by `tokenseek train`")
    if not curve:
        raise TokenSeekError(f"{curve_file} holds no loss points (the run logged no step): train longer or lower --logging-steps")
    summary = None
    summary_file = path / "train_summary.json"
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            summary = None
    name = path.resolve().name
    return {"dir": str(path), "name": name, "label": run_label(summary, name), "curve": curve, "summary": summary}


def load_runs(paths) -> list[dict]:
    runs = [load_run(p) for p in paths]
    labels = [run["label"] for run in runs]
    for run in runs:
        if labels.count(run["label"]) > 1 and run["label"] != run["name"]:
            run["label"] = f"{run['label']} ({run['name']})"
    return runs
