"""``tokenseek visualize``: see which tokens are kept and why (one example, a whole store, or loss curves)."""

from __future__ import annotations

import argparse


_EPILOG = """modes:
  one example:   tokenseek visualize --data D --index I [--scores S] --output DIR
                 -> DIR/tokens.html, attention.png, gradient_map.png, context_score.png,
                    gradient_score.png, example.json (+ gradient_layers.png with --layers)
  a score store: tokenseek visualize --data D --scores S --summary --output DIR
                 -> DIR/summary.json, summary.md, positions.png
  loss curves:   tokenseek visualize --runs RUN1 RUN2 ... --output loss.png
"""


def register(sub) -> None:
    from tokenseek.cli.common import add_data_args, add_model_args, add_selection_args
    from tokenseek.cli.config import add_options
    from tokenseek.visualize.config import VisualizeConfig

    p = sub.add_parser(
        "visualize",
        help="show which tokens are kept and why (HTML + figures)",
        description="Visualize token seeking: the kept tokens of one example with its attention/gradient maps, "
        "statistics over a score store, or the training loss of several runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_data_args(p)
    add_options(p, VisualizeConfig, suppress=False)
    add_selection_args(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.cli.common import DATA_OPTIONS, MODEL_OPTIONS, SELECTION_OPTIONS
    from tokenseek.cli.config import from_args
    from tokenseek.visualize.config import VisualizeConfig
    from tokenseek.visualize.job import run_visualize

    shared = {name: getattr(args, name) for name in MODEL_OPTIONS + DATA_OPTIONS + SELECTION_OPTIONS}
    print(run_visualize(from_args(VisualizeConfig, args, **shared))["message"])
    return 0
