"""Declarative, resumable studies: one YAML per study, one result JSON per cell, generated reports.

``tokenseek experiment experiments/alpaca.yaml`` runs (or continues) a study;
``--report`` regenerates its tables and figure from the JSONs without running anything.
From Python: ``run_experiments(ExperimentOptions(configs=[...]))``.
"""

from tokenseek.experiment.config import Cell, Study, load_study, parse_study
from tokenseek.experiment.job import ExperimentOptions, run_experiments

__all__ = ["Cell", "ExperimentOptions", "Study", "load_study", "parse_study", "run_experiments"]
