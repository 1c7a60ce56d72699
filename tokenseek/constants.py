"""Constants shared by the data, ditching and seeking code (a leaf module: imports nothing)."""

# The label that cross-entropy skips: the convention of transformers' causal LMs and torch.
IGNORE_INDEX = -100
