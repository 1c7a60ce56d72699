"""Evaluation: the paper's few-shot benchmarks through lm-eval, held-out loss, result tables."""
