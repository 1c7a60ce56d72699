"""``tokenseek plan``: predict peak training memory per ratio and pick the largest ratio under a budget."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenseek.cli.bench import add_lora_args, lora_kwargs
from tokenseek.cli.common import add_model_args
from tokenseek.errors import TokenSeekError


def register(sub) -> None:
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
    # No argparse defaults for these two: with --from-bench, "not given" means "any group".
    p.add_argument("--peft", help="none, lora, qlora, loha, lokr or ia3 (default: lora)")
    p.add_argument("--seq-len", type=int, help="tokens per example (your --max-length; default: 512)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--budget", required=True, help="memory budget, e.g. 6GiB, 6GB, 800MiB, 800MB")
    p.add_argument("--no-check", action="store_true", help="skip measuring the check point (faster, no error estimate)")
    p.add_argument("--from-bench", metavar="BENCH_JSON", help="plan from an earlier `tokenseek bench` bench.json instead of measuring")
    p.add_argument("--output", help="also write the plan as JSON here")
    add_lora_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenseek.bench.planner import CHECK_RATIO, FIT_RATIOS, make_plan, measure_peaks, parse_budget, plan_from_bench
    from tokenseek.models.adapters import PEFT_METHODS

    budget = parse_budget(args.budget)  # before any measuring: a typo should cost nothing
    if args.from_bench:
        path = Path(args.from_bench)
        if path.is_dir():
            path = path / "bench.json"
        if not path.is_file():
            raise TokenSeekError(f"--from-bench {args.from_bench}: no bench.json there; run `tokenseek bench` first")
        plan = plan_from_bench(json.loads(path.read_text()), budget, peft=args.peft, seq_len=args.seq_len)
    else:
        args.peft = args.peft or "lora"
        args.seq_len = args.seq_len or 512
        if args.peft not in PEFT_METHODS:
            raise TokenSeekError(f"unknown --peft {args.peft!r}: choose one of {', '.join(PEFT_METHODS)}")
        if args.seq_len < 2 or args.batch_size < 1:
            raise TokenSeekError("--seq-len must be at least 2 and --batch-size at least 1")
        ratios = FIT_RATIOS if args.no_check else FIT_RATIOS + (CHECK_RATIO,)
        print(f"measuring peak memory at ratios {', '.join(f'{r:g}' for r in ratios)} ...", file=sys.stderr, flush=True)
        peaks = measure_peaks(
            args.model, args.peft, args.seq_len, args.batch_size, ratios, lora_kwargs(args),
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
        plan = make_plan(peaks, budget, context=f"--peft {args.peft}, seq {args.seq_len}, batch {args.batch_size}")
    print(plan.report())
    if args.output:
        from tokenseek.utils.io import write_json

        write_json(args.output, {
            "budget_bytes": plan.budget, "a": plan.a, "b": plan.b, "floor": plan.floor, "fit_points": plan.fit_points,
            "checks": plan.checks, "best_ratio": plan.best_ratio(),
            "predicted": {str(r): plan.predict(r) for r in (1.0, 0.5, 0.3, 0.1, 0.05)},
        })
    return 0 if plan.best_ratio() is not None else 1

