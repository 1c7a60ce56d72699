"""The statistics of a study's report: per-row values, paired and seed-to-seed standard errors,
comparisons on matched seeds, the variance-ratio test and benchmark summaries.

Each function reads result JSONs (as loaded by ``tokenseek.experiment.report``) and nothing else.
"""

from __future__ import annotations

import math
import statistics

from tokenseek.experiment.config import effective


def percent(x) -> str:
    """A share as a percentage with one decimal (no % sign; "—" when missing), as the tables print it."""
    return "—" if x is None else f"{100 * x:.1f}"


def mean_of(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def sd_of(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) >= 2 else None


def _per_example(result: dict, metric: str) -> tuple[list, list] | None:
    """(per-example values, their weights) of one cell: held-out losses weighted by response
    tokens, or exact-match correctness (0/1) weighted equally."""
    if metric == "heldout":
        h = result.get("heldout")
        return (h["per_example_loss"], h["per_example_tokens"]) if h else None
    e = result.get(metric)
    return (e["per_example_correct"], [1] * len(e["per_example_correct"])) if e else None


def _value(result: dict, metric: str) -> float:
    """One cell's held-out loss or exact-match accuracy (the caller checks it was measured)."""
    return result[metric]["loss" if metric == "heldout" else "accuracy"]


def metric_values(row: dict, metric: str = "heldout") -> list[float]:
    """The row's value per finished seed: held-out loss or exact-match accuracy."""
    return [_value(r, metric) for _, r in row["done"] if r.get(metric)]


def heldout_values(row: dict) -> list[float]:
    return metric_values(row, "heldout")


def _paired(pa: tuple[list, list] | None, pb: tuple[list, list] | None) -> tuple[float, float, int] | None:
    """(Δ a−b, its SE over examples, n) for two cells scored on the same examples.

    Δ is the weighted mean of per-example differences (= the difference of the two
    weighted means); the SE is its linearised (ratio-estimator) standard error. With equal
    weights (exact match) it is the ordinary paired SE, sd(d)/√n.
    """
    if not pa or not pb:
        return None
    la, ta = pa
    lb, tb = pb
    if len(la) != len(lb) or ta != tb:
        return None
    pairs = [(x - y, t) for x, y, t in zip(la, lb, ta) if x is not None and y is not None and t]
    n = len(pairs)
    if n < 2:
        return None
    total = sum(t for _, t in pairs)
    delta = sum(d * t for d, t in pairs) / total
    var = n / (n - 1) * sum((t * (d - delta)) ** 2 for d, t in pairs)
    return delta, math.sqrt(var) / total, n


def paired_se(a: dict, b: dict, metric: str = "heldout") -> tuple[float, float, int] | None:
    """(Δ a−b, its SE over the evaluation examples, n) for two cells (result dicts)."""
    return _paired(_per_example(a, metric), _per_example(b, metric))


def mean_per_example(row: dict, metric: str = "heldout") -> tuple[list, list] | None:
    """The row's per-example values averaged over its seeds (same examples), with their weights."""
    per = [_per_example(r, metric) for _, r in row["done"]]
    per = [p for p in per if p]
    if not per:
        return None
    weights = per[0][1]
    if any(w != weights for _, w in per):
        return None
    values = []
    for i in range(len(weights)):
        column = [v[i] for v, _ in per]
        values.append(None if any(v is None for v in column) else sum(column) / len(column))
    return values, weights


def matched_seeds(row_a: dict, row_b: dict, metric: str = "heldout") -> tuple[dict, dict, list[int] | None]:
    """Both trained rows cut to the seeds both have finished, while one has seeds the other has
    not (a study still running): a cell of one seed shares its data order and adapter
    initialisation with the other rows' cell of that seed, so comparing means over different
    seed sets would add seed-to-seed noise to the difference. Returns the rows and the seeds
    kept (None when nothing was cut: equal seed sets, or a row without training seeds)."""
    cells = [c for row in (row_a, row_b) for c, _ in row["done"]]
    if not cells or not all(c is not None and getattr(c, "train", True) for c in cells):
        return row_a, row_b, None
    seeds_a, seeds_b = set(_by_seed(row_a, metric)), set(_by_seed(row_b, metric))
    common = seeds_a & seeds_b
    if not common or seeds_a == seeds_b:
        return row_a, row_b, None

    def cut(row: dict) -> dict:
        return {**row, "done": [(c, r) for c, r in row["done"] if int(effective(c.params).get("seed", 0)) in common]}

    return cut(row_a), cut(row_b), sorted(common)


def compare(row_a: dict, row_b: dict, metric: str = "heldout") -> dict | None:
    """The metric of row a minus row b, with the noise it is judged against (on the seeds both
    rows finished, see :func:`matched_seeds`)."""
    row_a, row_b, seeds = matched_seeds(row_a, row_b, metric)
    va, vb = metric_values(row_a, metric), metric_values(row_b, metric)
    if not va or not vb:
        return None
    delta = mean_of(va) - mean_of(vb)
    # Evaluation sampling noise: paired over the same examples, on the seed-averaged per-example values.
    paired = _paired(mean_per_example(row_a, metric), mean_per_example(row_b, metric))
    example_se = paired[1] if paired else None
    # Training noise: seed-to-seed spread of the rows' means.
    seed_se = None
    if len(va) >= 2 and len(vb) >= 2:
        seed_se = math.sqrt(sd_of(va) ** 2 / len(va) + sd_of(vb) ** 2 / len(vb))
    elif len(va) >= 2 or len(vb) >= 2:
        many = va if len(va) >= 2 else vb
        seed_se = sd_of(many) / math.sqrt(len(many))
    se = max([s for s in (example_se, seed_se) if s is not None], default=None)
    return {"delta": delta, "example_se": example_se, "seed_se": seed_se, "se": se, "n_a": len(va), "n_b": len(vb),
            "per_seed": per_seed_deltas(row_a, row_b, metric), "matched_seeds": seeds}


def _by_seed(row: dict, metric: str) -> dict[int, float]:
    return {int(effective(c.params).get("seed", 0)): _value(r, metric) for c, r in row["done"] if c is not None and r.get(metric)}


def per_seed_deltas(row_a: dict, row_b: dict, metric: str = "heldout") -> list[tuple[int, float]]:
    """a − b seed by seed, for the seeds both rows finished. Cells of one seed share the data
    order and the adapter's initialisation, so a difference that holds in every seed is
    visible here even when the seeds' unpaired spread (the verdict's noise) is wide."""
    a, b = _by_seed(row_a, metric), _by_seed(row_b, metric)
    return [(s, a[s] - b[s]) for s in sorted(a.keys() & b.keys())]


def variance_ratio_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """F = var(b) / var(a) and the one-sided p-value of "a varies less than b" (F-test for
    two normal samples' variances: under equal variances F ~ F(n_b - 1, n_a - 1))."""
    from scipy.stats import f as f_distribution

    var_a, var_b = statistics.variance(a), statistics.variance(b)
    if var_a == 0:
        return math.inf, 0.0 if var_b > 0 else 1.0
    ratio = var_b / var_a
    return ratio, float(f_distribution.sf(ratio, len(b) - 1, len(a) - 1))


def benchmark_summary(row: dict) -> dict:
    """``{task: (value, noise, kind)}`` plus ``"average"``; noise is lm-eval's stderr for one run,
    the seed sd for several."""
    per_task: dict[str, list] = {}
    for _, r in row["done"]:
        for name, rec in ((r.get("benchmarks") or {}).get("tasks") or {}).items():
            per_task.setdefault(name, []).append(rec)
    out = {}
    for name, recs in per_task.items():
        values = [x["value"] for x in recs if x.get("value") is not None]
        if not values:
            continue
        if len(values) == 1:
            out[name] = (values[0], recs[0].get("stderr"), "stderr")
        else:
            out[name] = (mean_of(values), sd_of(values), "sd")
    if out:
        vals = [v for v, _, _ in out.values()]
        errs = [e for _, e, k in out.values() if e is not None and k == "stderr"]
        avg_se = math.sqrt(sum(e * e for e in errs)) / len(vals) if len(errs) == len(vals) else None
        out["average"] = (sum(vals) / len(vals), avg_se, "stderr")
    return out
