"""``tokenseek export``: a training run as a standalone model (merged) or its adapter."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's model as a standalone folder (merged full model or adapter)",
        description="Write a `tokenseek train` run's model to a new folder that plain transformers/peft load: with --merge "
        "the adapter is folded into the base model (safetensors + tokenizer), otherwise the adapter (or the full model "
        "of a --peft none run) is copied.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `tokenseek train` output directory, or its model/ folder")
    p.add_argument("--out", required=True, help="new output directory (must not exist or be empty)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base model (default: export the adapter alone)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the exported folder to this Hub repo (needs network and `hf auth login`)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenseek.models.export import export_run

    done = export_run(args.run_dir, args.out, merge=args.merge, push_to_hub=args.push_to_hub, private=args.private)
    print(f"exported the {done['kind']} to {done['out']}" + (f" and pushed it to {done['pushed_to']}" if done["pushed_to"] else ""))
    return 0
