"""``tokenseek experiment``: run a study config cell by cell (resumable) and report it."""

from __future__ import annotations

import argparse


def register(sub) -> None:
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
    p.add_argument("config", nargs="+", help="study YAML(s), e.g. experiments/alpaca.yaml")
    p.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells (names or shell globs, e.g. 'lora-random*')")
    p.add_argument("--dry-run", action="store_true", help="list the cells, their state and what they would run; run nothing")
    p.add_argument("--report", action="store_true", help="only regenerate the tables/figure/report section from the result JSONs")
    p.add_argument("--report-path", help="write the report section here instead of the config's report.path")
    p.add_argument("--no-report", action="store_true", help="do not update the report after running")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice). On a CPU shared with other jobs, 1 can be several times "
        "faster than oversubscribed threads",
    )
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.errors import TokenSeekError
    from tokenseek.experiment.config import load_study
    from tokenseek.experiment.report import write_report
    from tokenseek.experiment.runner import run_study

    if args.report and (args.dry_run or args.no_report):
        raise TokenSeekError("--report only writes the report: drop --dry-run/--no-report (or drop --report to run cells)")
    if len(args.config) > 1 and (args.report_path or args.only):
        raise TokenSeekError("--report-path and --only are for one study: give one config, or drop them")
    studies = [load_study(path) for path in args.config]  # every config checked before any work
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise TokenSeekError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for study in studies:
        if args.report:
            out = write_report(study, args.report_path)
            print(f"{study.study}: {out['finished']} of {out['cells']} cells finished; wrote {out['report']} and {out['table']}")
            continue
        run_study(study, args.only, dry_run=args.dry_run, progress=lambda line: print(line, flush=True))
        if not args.dry_run and not args.no_report:
            out = write_report(study, args.report_path)
            print(f"report: {out['report']} ({out['finished']} of {out['cells']} cells finished)")
    return 0
