"""``tokenseek bench``: memory and speed of full-token training vs. token ditching per ratio."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tokenseek.cli.common import add_adapter_args, add_dtype_arg, add_model_args, add_step_args, adapter_from_args


def register(sub) -> None:
    from tokenseek.bench.run import BenchConfig
    from tokenseek.cli.config import add_options

    p = sub.add_parser(
        "bench",
        help="measure memory and step time per ratio",
        description=(
            "Measure full-token training (ratio 1.0), token ditching at each ratio and the scoring stage, "
            "each in a fresh process, on synthetic input of exactly --seq-len tokens with labels on every token. "
            "Writes bench.json, bench.md (tables), bench.png (Fig. 6-style) and breakdown.png (Fig. 1(a)-style)."
        ),
    )
    add_model_args(p)
    add_options(p, BenchConfig, suppress=False)
    add_adapter_args(p)
    add_dtype_arg(p)
    add_step_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenseek.bench.run import BenchConfig, run_bench
    from tokenseek.cli.config import from_args

    cfg = from_args(BenchConfig, args, model=args.model, dtype=args.dtype, context_chunk=args.context_chunk)
    pefts, adapter = adapter_from_args(args, cfg.pefts)
    cfg = dataclasses.replace(cfg, pefts=pefts, lora=adapter)
    if cfg.knobs:
        return run_knobs_cli(cfg)
    run_bench(cfg, progress=lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(cfg.output)
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}, {out / 'breakdown.png'}")
    return 0


def run_knobs_cli(bench) -> int:
    """``bench --knobs``: the settings of one preset side by side (``bench`` is the BenchConfig)."""
    from tokenseek.bench.knobs import KnobsConfig, run_knobs

    ratios = [r for r in bench.ratios if r < 1] or [0.1]
    cfg = KnobsConfig(
        preset=bench.knobs, model=bench.model, peft=bench.pefts[0], seq_lens=bench.seq_lens, dtypes=[bench.dtype],
        ratio=min(ratios, key=lambda r: abs(r - 0.1)), steps=bench.steps, warmup=bench.warmup, seed=bench.seed,
        threads=bench.threads, timeout=bench.timeout, lora=bench.lora, target_share=bench.target_share,
        context_chunk=bench.context_chunk,
        output=bench.output if bench.output != "bench" else "bench-knobs",
    )
    run_knobs(cfg, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print((Path(cfg.output) / "knobs.md").read_text())
    print(f"wrote {Path(cfg.output) / 'knobs.json'} and {Path(cfg.output) / 'knobs.md'}")
    return 0
