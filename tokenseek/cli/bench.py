"""``tokenseek bench``: memory and speed of full-token training vs. token ditching per ratio."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenseek.cli.common import add_adapter_args, add_dtype_arg, add_model_args
from tokenseek.errors import TokenSeekError


def add_lora_args(p: argparse.ArgumentParser) -> None:
    add_adapter_args(p)


def lora_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}
    if args.target_modules:
        kwargs["target_modules"] = args.target_modules
    return kwargs


def register(sub) -> None:
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
    p.add_argument("--peft", default="lora", help="comma list of none, lora, qlora, loha, lokr, ia3 (default: lora)")
    p.add_argument("--seq-len", default="1024", help="tokens per example; a comma list runs several (default: 1024)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--ratios", default="1.0,0.5,0.3,0.1,0.05", help="ratios to measure; 1.0 is always added (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first; AdamW state is created here (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-score", action="store_true", help="skip the scoring stage (tokenseek.seeking.seek)")
    p.add_argument("--score-ratio", type=float, default=0.1, help="ratio passed to seek in the scoring stage (default: 0.1)")
    p.add_argument("--jobs", type=int, default=1, help="workers at a time; timings are only meaningful with 1 (default: 1)")
    p.add_argument("--threads", type=int, help="intra-op threads per worker (default: torch's, one per core); 1 is steadier on a busy machine")
    p.add_argument("--timeout", type=float, help="seconds before a configuration is recorded as failed")
    p.add_argument("--output", default="bench", help="output directory (default: bench)")
    p.add_argument(
        "--knobs",
        choices=["memory", "sweep", "online"],
        help="instead of the ratio sweep, measure settings side by side against a baseline: 'memory' = full-token, "
        "+ checkpointing, + chunked CE (the baseline) vs TokenSeek alone and stacked with both; 'sweep' = the baseline vs TokenSeek "
        "+ checkpointing + chunked CE only (for many --seq-len values); 'online' = full-token vs "
        "offline vs online seeking. Uses the first --ratios value below 1 (default 0.1)",
    )
    p.add_argument(
        "--target-share",
        type=float,
        default=1.0,
        help="with --knobs: share of each example's positions that carry a label, the rest being a masked prompt "
        "(default 1.0, labels on every token; Alpaca-style data is about 0.5)",
    )
    add_lora_args(p)
    add_dtype_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenseek.bench.run import BenchConfig, parse_list, run_bench

    if args.knobs:
        return run_knobs_cli(args)
    cfg = BenchConfig(
        model=args.model,
        pefts=parse_list(args.peft, str, "--peft"),
        seq_lens=parse_list(args.seq_len, int, "--seq-len"),
        batch_size=args.batch_size,
        ratios=parse_list(args.ratios, float, "--ratios"),
        steps=args.steps,
        warmup=args.warmup,
        seed=args.seed,
        score=not args.no_score,
        score_ratio=args.score_ratio,
        lora=lora_kwargs(args),
        output=args.output,
        jobs=args.jobs,
        threads=args.threads,
        timeout=args.timeout,
        dtype=args.dtype,
    )
    run_bench(cfg, progress=lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(cfg.output)
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}, {out / 'breakdown.png'}")
    return 0


def run_knobs_cli(args: argparse.Namespace) -> int:
    from tokenseek.bench.knobs import KnobsConfig, run_knobs
    from tokenseek.bench.run import parse_list
    ratios = [r for r in parse_list(args.ratios, float, "--ratios") if r < 1] or [0.1]
    if not 0 < args.target_share <= 1:
        raise TokenSeekError(f"--target-share must be in (0, 1], got {args.target_share}")
    output = args.output if args.output != "bench" else "bench-knobs"
    cfg = KnobsConfig(
        preset=args.knobs, model=args.model, peft=parse_list(args.peft, str, "--peft")[0], seq_lens=parse_list(args.seq_len, int, "--seq-len"),
        dtypes=[args.dtype], ratio=min(ratios, key=lambda r: abs(r - 0.1)), steps=args.steps, warmup=args.warmup, seed=args.seed,
        threads=args.threads, timeout=args.timeout, lora=lora_kwargs(args), output=output, target_share=args.target_share,
    )
    run_knobs(cfg, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print((Path(cfg.output) / "knobs.md").read_text())
    print(f"wrote {Path(cfg.output) / 'knobs.json'} and {Path(cfg.output) / 'knobs.md'}")
    return 0
