"""Declarative, resumable studies: one YAML per study, one result JSON per cell, generated reports.

``tokenseek experiment experiments/alpaca.yaml`` runs (or continues) a study;
``--report`` regenerates its tables and figure from the JSONs without running anything.
"""

from tokenseek.experiment.config import Cell, Study, load_study, parse_study

__all__ = ["Cell", "Study", "load_study", "parse_study"]
