"""``tokenseek plan``: predict peak training memory per ratio and pick the largest ratio under a budget."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tokenseek.cli.common import adapter_from_args, add_adapter_args, add_model_args, unread_adapter_args
from tokenseek.errors import TokenSeekError

logger = logging.getLogger(__name__)


def register(sub) -> None:
    from tokenseek.bench.planner import PlanConfig
    from tokenseek.cli.config import add_options

    p = sub.add_parser(
        "plan",
        help="pick the largest ratio that fits a memory budget",
        description=(
            "Measure peak tensor memory at two ratios (1.0 and 0.1) in fresh processes, fit peak = a + b * ratio, "
            "check the fit on a third ratio (0.5), and print the predicted peak per ratio and the largest ratio "
            "that fits --budget. The budget covers tensors; the runtime itself comes on top."
        ),
    )
    add_model_args(p)
    add_options(p, PlanConfig, suppress=False)
    add_adapter_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenseek.bench.planner import CHECK_RATIO, FIT_RATIOS, PlanConfig, make_plan, measure_peaks, parse_budget, plan_from_bench
    from tokenseek.cli.config import from_args

    cfg = from_args(PlanConfig, args)
    budget = parse_budget(cfg.budget)  # before any measuring: a typo should cost nothing
    if cfg.from_bench:
        for line in unread_adapter_args(args, "--from-bench plans from the bench's measurements, taken with its own adapter settings"):
            logger.warning(line)
        path = Path(cfg.from_bench)
        if path.is_dir():
            path = path / "bench.json"
        if not path.is_file():
            raise TokenSeekError(f"--from-bench {cfg.from_bench}: no bench.json there; run `tokenseek bench` first")
        plan = plan_from_bench(json.loads(path.read_text()), budget, peft=cfg.peft, seq_len=cfg.seq_len)
    else:
        seq_len = cfg.seq_len or 512
        (peft,), adapter = adapter_from_args(args, [cfg.peft or "lora"])  # checked before any measuring
        ratios = FIT_RATIOS + ((CHECK_RATIO,) if cfg.check else ())
        print(f"measuring peak memory at ratios {', '.join(f'{r:g}' for r in ratios)} ...", file=sys.stderr, flush=True)
        peaks = measure_peaks(
            args.model, peft, seq_len, cfg.batch_size, ratios, adapter,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
        plan = make_plan(peaks, budget, context=f"--peft {peft}, seq {seq_len}, batch {cfg.batch_size}")
    print(plan.report())
    if cfg.output:
        from tokenseek.utils.io import write_json

        write_json(cfg.output, {
            "budget_bytes": plan.budget, "a": plan.a, "b": plan.b, "floor": plan.floor, "fit_points": plan.fit_points,
            "checks": plan.checks, "best_ratio": plan.best_ratio(),
            "predicted": {str(r): plan.predict(r) for r in (1.0, 0.5, 0.3, 0.1, 0.05)},
        })
    return 0 if plan.best_ratio() is not None else 1

