"""``tokenseek score``: score a dataset once and store the per-token scores."""

from __future__ import annotations

import argparse
import os
import time


def register(sub) -> None:
    from tokenseek.cli.common import add_data_args, add_dtype_arg, add_model_args, add_selection_args
    from tokenseek.cli.config import add_options
    from tokenseek.seeking.config import ScoreConfig

    p = sub.add_parser("score", help="score every token of a dataset (token seeking)", description="Score every token with the model's own attention and gradients; resumable.")
    add_model_args(p)
    add_data_args(p)
    add_selection_args(p)  # for the reference keep mask stored with the scores (any ratio can be re-selected later)
    p.add_argument("--out", required=True, help="score store directory (rerun the same command to resume)")
    add_options(p, ScoreConfig, suppress=False)
    add_dtype_arg(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.data import records_from, tokenize_with
    from tokenseek.models import load_model
    from tokenseek.cli.config import from_args
    from tokenseek.seeking.config import ScoreConfig
    from tokenseek.seeking.select import check_selection
    from tokenseek.seeking.store import score_dataset

    check_selection("tokenseek", args.ratio, args.alpha, args.beta)
    cfg = from_args(ScoreConfig, args)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    records = records_from(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    data = tokenize_with(records, tokenizer, args)
    started = time.time()
    store = score_dataset(
        model,
        tokenizer,
        data,
        args.out,
        model_id=args.model,
        batch_size=cfg.batch_size,
        layers_back=cfg.grad_layer,
        grad_mode=cfg.grad_mode,
        ratio=args.ratio,
        alpha=args.alpha,
        beta=args.beta,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
    )
    if rank == 0:
        elapsed = time.time() - started
        print(f"{data.report()}")
        print(f"scored {len(store)} examples into {args.out} ({elapsed:.1f} s, {len(store) / max(elapsed, 1e-9):.2f} examples/s this run)")
    return 0
