"""lm-eval task definitions (YAML) for the local copies of the paper's benchmarks."""
