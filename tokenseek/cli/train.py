"""``tokenseek train``."""

from __future__ import annotations

import argparse
import json

from tokenseek.cli.common import add_data_args, add_dtype_arg, add_model_args, add_selection_args, apply_config_file


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune with token ditching", description="Fine-tune a causal LM, back-propagating only the kept tokens.")
    p.add_argument("--config", help="YAML file with any of these options (flags given here win)")
    p.add_argument("--output-dir", default="runs/demo", help="where the model/adapter, loss curve and summary go (default: runs/demo)")
    add_model_args(p)
    add_data_args(p)
    add_selection_args(p, default="tokenseek")
    p.add_argument("--scores", help="score store from `tokenseek score` (scored selections; default: score first)")
    p.add_argument(
        "--seeking",
        choices=["offline", "online"],
        default="offline",
        help="offline: score the data once before training (a store, reusable); online: score inside each "
        "training step with the current weights, no store (default: offline)",
    )
    p.add_argument(
        "--loss-norm",
        choices=["token", "example"],
        default="token",
        help="token: mean over all kept targets of the accumulation window; example: mean of per-example means "
        "(TokenTune's rule) (default: token)",
    )
    p.add_argument("--loss-chunk", type=int, default=128, help="apply the LM head and loss to this many positions at a time (0: all at once) (default: 128)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute the kept pass's layers in backward (less memory, more time)")
    p.add_argument("--peft", default="lora", help="none, lora, qlora, loha, lokr or ia3 (default: lora)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", help="comma-separated module names for adapters (default: all linear layers)")
    add_dtype_arg(p)
    p.add_argument("--heldout", type=float, default=0.0, help="hold out this fraction (<1) or count of records for eval")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (default: one full epoch)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--optim", default="adamw_torch", help="any transformers optimizer name (default: adamw_torch)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 disables)")
    p.add_argument("--scheduler", default="cosine")
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="warm-up steps: a fraction (<1) of training or a count")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--save-total-limit", type=int, default=2)
    p.add_argument("--memory-budget", help="e.g. 6GiB: train at the largest ratio the planner says fits")
    p.add_argument("--overwrite", action="store_true", help="replace an output dir that holds a different run")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.train.recipe import TrainConfig, run_train

    allowed = TrainConfig.field_names()
    args = apply_config_file(args, args.parser, allowed)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in allowed})
    summary = run_train(cfg)
    if summary:
        print(json.dumps({k: summary[k] for k in ("selection", "ratio", "peft", "steps", "first_loss", "final_loss", "wall_time_s")}))
        print(f"saved to {cfg.output_dir}")
    return 0
