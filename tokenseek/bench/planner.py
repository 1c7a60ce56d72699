"""Memory-budget planner: predict peak training memory per ratio, pick the largest ratio that fits.

A step's peak is the larger of two peaks with different shapes:

- forward + backward: parameters, gradients and optimizer state plus the saved
  activations, which grow linearly with the number of kept tokens -> ``a + b * ratio``;
- the optimizer update: parameters + gradients + AdamW state + update temporaries,
  the same at every ratio -> a floor. For full-parameter training it is the peak
  below ratio ~0.3, so a line through total peaks would overshoot in between and
  undershoot below.

The worker measures both peaks inside one step; two measured ratios (by default 1.0,
i.e. full-token training, and 0.1) fit ``peak = max(a + b * ratio, floor)``, and a
third ratio the fit did not use (0.5) tells how far to trust it.

"Peak" is peak live tensor memory (CUDA: ``max_memory_allocated``; CPU: profiler
replay), so a budget is for tensors: the runtime (CUDA context, or ~0.4 GiB of
libraries on CPU) comes on top.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

from tokenseek.errors import TokenSeekError
from tokenseek.models.adapters import PEFT_METHODS, adapter_kwargs
from tokenseek.utils.options import check_options, option

logger = logging.getLogger(__name__)

UNITS = {"gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6}
FIT_RATIOS = (1.0, 0.1)
CHECK_RATIO = 0.5
GRID_STEP = 0.01  # picked ratios are multiples of this
TABLE_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)


@dataclass
class PlanConfig:
    """The options of ``tokenseek plan`` that are its own (model and adapter options are TrainConfig's)."""

    budget: str | None = option(None, "memory budget, e.g. 6GiB, 6GB, 800MiB, 800MB", required=True)
    # No defaults for these two: with --from-bench, "not given" means "any group".
    peft: str | None = option(None, "adapter method", choices=PEFT_METHODS, shown="lora, or the bench file's group")
    seq_len: int | None = option(None, "tokens per example (your --max-length)", shown="512, or the bench file's group", minimum=2)
    batch_size: int = option(1, "examples per step", minimum=1)
    check: bool = option(True, "measure a third ratio the fit did not use, to tell how far to trust it (--no-check: faster)")
    from_bench: str | None = option(None, "plan from an earlier `tokenseek bench` bench.json (or its folder) instead of measuring", metavar="BENCH_JSON")
    output: str | None = option(None, "also write the plan as JSON here")

    def __post_init__(self) -> None:
        check_options(self)


def parse_budget(text: str) -> int:
    """``"6GiB"`` -> bytes. Accepts GiB, GB, MiB, MB (any case, optional space, decimals)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise TokenSeekError(f"memory budget {text!r} not understood: write a number and a unit, e.g. 6GiB, 6GB, 800MiB or 800MB")
    value = float(match.group(1)) * UNITS[match.group(2).lower()]
    if value <= 0:
        raise TokenSeekError(f"memory budget {text!r} must be positive")
    return int(value)


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def fit_line(points: dict[float, float]) -> tuple[float, float]:
    """Least-squares ``peak = a + b * ratio`` (exact through two points)."""
    if len(points) < 2:
        raise TokenSeekError("the planner needs peak memory measured at two or more different ratios")
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


@dataclass
class Plan:
    budget: int
    a: float
    b: float
    fit_points: dict[float, float]  # ratio -> measured peak of the fitted points
    floor: float | None = None  # optimizer-update peak (ratio-independent), when measured
    checks: list[dict] = field(default_factory=list)  # {"ratio", "predicted", "measured", "error"}
    context: str = ""

    def predict(self, ratio: float) -> float:
        line = self.a + self.b * ratio
        return line if self.floor is None else max(line, self.floor)

    def best_ratio(self) -> float | None:
        """The largest multiple of GRID_STEP in (0, 1] whose predicted peak fits the budget."""
        if self.predict(1.0) <= self.budget:
            return 1.0
        if self.b <= 0 or (self.floor is not None and self.floor > self.budget):
            return None
        r = math.floor((self.budget - self.a) / self.b / GRID_STEP + 1e-9) * GRID_STEP
        r = round(min(r, 1.0), 10)
        return r if r >= GRID_STEP else None

    def table(self) -> str:
        rows = ["| Ratio | Predicted peak | Measured | Fits |", "|---:|---:|---:|:---:|"]
        measured = {**self.fit_points, **{c["ratio"]: c["measured"] for c in self.checks}}
        for r in sorted(set(TABLE_RATIOS) | set(measured), reverse=True):
            m = measured.get(r)
            seen = "–" if m is None else format_bytes(m) + (" (fit)" if r in self.fit_points else " (check)")
            rows.append(f"| {100 * r:g}% | {format_bytes(self.predict(r))} | {seen} | {'yes' if self.predict(r) <= self.budget else 'no'} |")
        return "\n".join(rows)

    def report(self) -> str:
        lines = [self.context, "", self.table(), ""] if self.context else [self.table(), ""]
        fit = f"{format_bytes(self.a)} + {format_bytes(self.b)} x ratio"
        if self.floor is not None:
            fit = f"max({fit}, {format_bytes(self.floor)} optimizer-step floor)"
        lines.append(f"fit: peak = {fit} (from ratios {', '.join(f'{r:g}' for r in self.fit_points)})")
        for c in self.checks:
            lines.append(
                f"check at ratio {c['ratio']:g} (not used for the fit): predicted {format_bytes(c['predicted'])}, "
                f"measured {format_bytes(c['measured'])}, error {100 * c['error']:+.1f}%"
            )
        best = self.best_ratio()
        if best is None:
            lines.append(f"no ratio fits {format_bytes(self.budget)}: the smallest predicted peak is {format_bytes(self.predict(GRID_STEP))}")
        else:
            lines.append(f"largest ratio that fits {format_bytes(self.budget)}: {best:g} (predicted peak {format_bytes(self.predict(best))})")
        return "\n".join(lines)


def _parts(point) -> tuple[float, float, float | None]:
    """(total peak, forward/backward peak, optimizer peak) of a measured point (a number = total only)."""
    if isinstance(point, dict):
        total = float(point["peak"])
        fb = point.get("forward_backward")
        return total, float(fb) if fb is not None else total, point.get("optimizer")
    return float(point), float(point), None


def make_plan(measured: dict, budget: int, fit_ratios=FIT_RATIOS, context: str = "") -> Plan:
    """Fit on ``fit_ratios`` (those measured; else the two extremes), check on every other measured point.

    ``measured`` maps ratio -> total peak bytes, or -> ``{"peak", "forward_backward", "optimizer"}``.
    """
    fit_keys = [r for r in fit_ratios if r in measured]
    if len(fit_keys) < 2 and len(measured) >= 2:
        fit_keys = [min(measured), max(measured)]
    parts = {r: _parts(p) for r, p in measured.items()}
    a, b = fit_line({r: parts[r][1] for r in fit_keys})
    floors = [p[2] for r, p in parts.items() if r in fit_keys and p[2] is not None]
    plan = Plan(budget=budget, a=a, b=b, fit_points={r: parts[r][0] for r in fit_keys}, floor=max(floors) if floors else None, context=context)
    for r in sorted(set(measured) - set(fit_keys), reverse=True):
        predicted, actual = plan.predict(r), parts[r][0]
        plan.checks.append({"ratio": r, "predicted": predicted, "measured": actual, "error": predicted / actual - 1})
    return plan


def point(result: dict) -> dict:
    m = result["memory"]
    return {"peak": m["peak_bytes"], "forward_backward": m.get("forward_backward_peak_bytes"), "optimizer": m.get("optimizer_peak_bytes")}


def measure_peaks(
    model, peft: str, seq_len: int, batch_size: int, ratios, lora: dict | None = None, progress=None, step: dict | None = None
) -> dict[float, dict]:
    """Peaks per ratio (see :func:`point`), each from one fresh worker (1 warm-up + 1 profiled step, no timing).

    ``step``: how the step runs, in the worker's spec keys (``dtype``, ``checkpointing``,
    ``loss_chunk``, ``context_chunk``); left out, the worker's defaults."""
    from tokenseek.bench.run import resolve, run_worker

    resolved = resolve(model)
    peaks = {}
    for ratio in ratios:
        spec = {
            "model": resolved,
            "peft": peft,
            "lora": lora or {},
            "seq_len": seq_len,
            "batch_size": batch_size,
            "mode": "train",
            "ratio": ratio,
            "steps": 0,
            "warmup": 1,
            **(step or {}),
        }
        result = run_worker(spec)
        if "error" in result:
            raise TokenSeekError(f"measuring ratio {ratio:g} for the memory plan failed: {result['error']}")
        peaks[ratio] = point(result)
        if progress:
            progress(f"  ratio {ratio:g}: peak {format_bytes(peaks[ratio]['peak'])}")
    return peaks


def plan_from_bench(doc: dict, budget: int, peft: str | None = None, seq_len: int | None = None) -> Plan:
    """A plan from an existing ``bench.json`` (no new measurements)."""
    groups = [g for g in doc["groups"] if (peft is None or g["peft"] == peft) and (seq_len is None or g["seq_len"] == seq_len)]
    if len(groups) != 1:
        have = ", ".join(f"--peft {g['peft']} --seq-len {g['seq_len']}" for g in doc["groups"])
        raise TokenSeekError(f"the bench file has {len(groups)} matching groups; pick one with {have}")
    g = groups[0]
    measured = {r["spec"]["ratio"]: point(r) for r in g["rows"] if "memory" in r}
    context = f"{g['peft']}, seq {g['seq_len']}, batch {doc['config']['batch_size']} (from bench results)"
    return make_plan(measured, budget, context=context)


def ratio_for_budget(cfg, max_seq_len: int) -> float:
    """The largest ratio whose predicted peak fits ``cfg.memory_budget`` for training ``cfg`` on ``max_seq_len`` tokens.

    ``cfg`` is a :class:`tokenseek.train.config.TrainConfig`. Raises :class:`TokenSeekError`
    naming the smallest predicted peak when no ratio fits.
    """
    budget = parse_budget(cfg.memory_budget)
    # Measured the way this run will train: its precision, checkpointing and chunking.
    step = {"dtype": cfg.dtype, "checkpointing": cfg.gradient_checkpointing, "loss_chunk": cfg.loss_chunk, "context_chunk": cfg.context_chunk}
    peaks = measure_peaks(cfg.model, cfg.peft, max_seq_len, cfg.batch_size, FIT_RATIOS, adapter_kwargs(cfg), progress=logger.info, step=step)
    plan = make_plan(peaks, budget, context=f"{cfg.peft}, {max_seq_len} tokens, batch {cfg.batch_size}")
    logger.info("memory plan:\n%s", plan.report())
    best = plan.best_ratio()
    if best is None:
        raise TokenSeekError(
            f"no ratio fits the memory budget {cfg.memory_budget}: the smallest predicted peak is "
            f"{format_bytes(plan.predict(GRID_STEP))} (ratio {GRID_STEP:g}, {max_seq_len} tokens x batch {cfg.batch_size}, "
            f"--peft {cfg.peft}); raise --memory-budget, lower --max-length or --batch-size, or use --peft qlora"
        )
    return best
