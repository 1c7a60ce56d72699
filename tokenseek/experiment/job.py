"""``tokenseek experiment`` as a library job: a queue of studies, each run (or continued) and reported.

:class:`ExperimentOptions` declares the command's arguments (the CLI builds them from its
fields) and refuses contradictory ones when built; :func:`run_experiments` checks every
study config before any work, then runs and reports each in turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tokenseek.errors import TokenSeekError
from tokenseek.utils.options import check_options, option


@dataclass
class ExperimentOptions:
    configs: list[str] = option(
        default_factory=list, help="study YAML(s), e.g. experiments/alpaca.yaml; several run one after the other",
        positional=True, metavar="CONFIG",
    )
    only: list[str] | None = option(None, "run only these cells (names or shell globs, e.g. 'lora-random*')", several=True, metavar="CELL")
    dry_run: bool = option(False, "list the cells, their state and what they would run; run nothing", negatable=False)
    report: bool = option(False, "only regenerate the tables/figure/report section from the result JSONs", negatable=False)
    report_path: str | None = option(None, "write the report section here instead of the config's report.path")
    no_report: bool = option(False, "do not update the report after running", negatable=False)
    threads: int | None = option(
        None,
        "torch CPU threads. On a CPU shared with other jobs, 1 can be several times faster than oversubscribed threads",
        minimum=1, shown="torch's choice",
    )

    def __post_init__(self) -> None:
        check_options(self)
        if not self.configs:
            raise TokenSeekError("give at least one study config (experiments/*.yaml)")
        if self.report and (self.dry_run or self.no_report):
            raise TokenSeekError("--report only writes the report: drop --dry-run/--no-report (or drop --report to run cells)")
        if len(self.configs) > 1 and (self.report_path or self.only):
            raise TokenSeekError("--report-path and --only are for one study: give one config, or drop them")


def run_experiments(opts: ExperimentOptions, progress: Callable[[str], None] = print) -> None:
    from tokenseek.experiment.config import load_study
    from tokenseek.experiment.report import write_report
    from tokenseek.experiment.runner import run_study

    studies = [load_study(path) for path in opts.configs]  # every config checked before any work
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    for study in studies:
        if opts.report:
            out = write_report(study, opts.report_path)
            progress(f"{study.study}: {out['finished']} of {out['cells']} cells finished; wrote {out['report']} and {out['table']}")
            continue
        run_study(study, opts.only, dry_run=opts.dry_run, progress=progress)
        if not opts.dry_run and not opts.no_report:
            out = write_report(study, opts.report_path)
            progress(f"report: {out['report']} ({out['finished']} of {out['cells']} cells finished)")
