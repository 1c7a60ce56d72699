"""Evaluation: the paper's few-shot benchmarks through lm-eval (local data), held-out loss,
exact-match accuracy of greedy answers, result tables.

Exports are imported lazily: the CLI parser and lm-eval (which imports
``tokenseek.eval.tasks.utils`` for the task YAMLs) should not pay for torch here.
"""

import importlib

_EXPORTS = {
    "EvalConfig": "tokenseek.eval.config",
    "PrefixCachedLM": "tokenseek.eval.prefix_lm",  # importing it registers lm-eval model "tokenseek-prefix"
    "TaskSelection": "tokenseek.eval.harness",
    "evaluate_tasks": "tokenseek.eval.harness",
    "exact_match": "tokenseek.eval.exact_match",
    "is_correct": "tokenseek.eval.exact_match",
    "normalise_answer": "tokenseek.eval.exact_match",
    "select_tasks": "tokenseek.eval.harness",
    "heldout_loss": "tokenseek.eval.heldout",
    "paper_table": "tokenseek.eval.report",
    "run_eval": "tokenseek.eval.job",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenseek.eval' has no attribute {name!r}")
