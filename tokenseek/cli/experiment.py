"""``tokenseek experiment``: run a study config cell by cell (resumable) and report it."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from tokenseek.cli.config import add_options
    from tokenseek.experiment.job import ExperimentOptions

    p = sub.add_parser(
        "experiment",
        help="run a study (grid of train+eval cells) from a YAML config; resumable",
        description=(
            "Run every cell of a study config (experiments/*.yaml): sample the data, score once per scoring setting, "
            "train, evaluate, and write one JSON per cell plus the study's tables in the report (docs/RESULTS.md). "
            "Finished cells are skipped; an interrupted run continues where it stopped when rerun. Several configs "
            "are run one after the other (a queue: the process goes on to the next study when one is done)."
        ),
    )
    add_options(p, ExperimentOptions, suppress=False)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.cli.config import from_args
    from tokenseek.experiment.job import ExperimentOptions, run_experiments

    run_experiments(from_args(ExperimentOptions, args), progress=lambda line: print(line, flush=True))
    return 0
