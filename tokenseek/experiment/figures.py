"""The figures of a study's report: training loss curves (Fig. 5 style) and quality against
ratio (Fig. 3 style), drawn from result JSONs and replaced only when their bytes change."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from tokenseek.experiment.config import METRICS, Study, effective
from tokenseek.experiment.stats import mean_of, metric_values
from tokenseek.utils.io import publish


def _publish_figure(path: Path, draw) -> None:
    """Draw into a temporary file and replace ``path`` only when the bytes change, so an
    unchanged study leaves its figures untouched (and a failed draw leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        draw(tmp)
        if not (path.is_file() and Path(tmp).read_bytes() == path.read_bytes()):
            publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def loss_figure(study: Study, table_rows: list[dict], path: Path) -> bool:
    """Fig. 5-style training loss curves, one line per row (mean over its seeds)."""
    from tokenseek.visualize.plots import plot_loss_curves

    runs = []
    for row in table_rows:
        curves = [r["loss_curve"] for _, r in row["done"] if r.get("loss_curve")]
        if not curves:
            continue
        steps = sorted(set.intersection(*[{p["step"] for p in c} for c in curves]))
        means = [{"step": s, "loss": mean_of([next(p["loss"] for p in c if p["step"] == s) for c in curves])} for s in steps]
        label = row["label"] + (f" (mean of {len(curves)} seeds)" if len(curves) > 1 else "")
        runs.append({"label": label, "curve": means})
    if not runs:
        return False
    _publish_figure(path, lambda tmp: plot_loss_curves(runs, tmp))
    return True


_AXIS_LABEL = {"heldout": "held-out loss (lower is better)", "exact_match": "exact match, % (higher is better)"}


def _row_ratio(row: dict) -> float:
    return float(effective(row["cells"][0].params).get("ratio", 1.0))


def ratio_panels(study: Study, table_rows: list[dict]) -> list[dict]:
    """The Fig. 3 data: every ``report.spreads`` entry whose rows differ in ratio is one line
    (its finished rows only), grouped into one panel per metric."""
    by_label = {r["label"]: r for r in table_rows}
    scale = {"heldout": 1.0, "exact_match": 100.0}
    panels: dict[str, dict] = {}
    for spread in study.report["spreads"]:
        metric = spread.get("metric", "heldout")
        spread_rows = [by_label[lab] for lab in spread["labels"]]
        if len({_row_ratio(r) for r in spread_rows}) < 2:
            continue
        points = []
        for row in spread_rows:
            values = [scale[metric] * v for v in metric_values(row, metric)]
            if values:
                points.append((_row_ratio(row), mean_of(values), min(values), max(values)))
        if not points:
            continue
        # The line is named by its first row's label without the percentage ("TokenSeek 5%, targets").
        name = re.sub(r"\s*\d+(\.\d+)?\s*%", "", spread_rows[0]["label"]).strip(" ,")
        panel = panels.setdefault(metric, {"ylabel": _AXIS_LABEL[metric], "series": [], "reference": None})
        panel["series"].append({"label": name, "points": sorted(points)})
    reference = by_label.get(study.report["reference"]) if study.report["reference"] else None
    for metric, panel in panels.items():
        values = metric_values(reference, metric) if reference else []
        if values:
            panel["reference"] = {"label": f"{reference['label']} (mean of {len(values)})", "value": scale[metric] * mean_of(values)}
    return [panels[m] for m in METRICS if m in panels]


def ratio_figure(study: Study, table_rows: list[dict], path: Path) -> bool:
    """Fig. 3-style quality against ratio, drawn when the study has a ratio spread with results."""
    from tokenseek.visualize.plots import plot_ratio_sweep

    panels = ratio_panels(study, table_rows)
    if not panels:
        return False
    _publish_figure(path, lambda tmp: plot_ratio_sweep(panels, tmp))
    return True
