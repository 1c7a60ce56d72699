"""Training: a transformers Trainer that back-propagates only kept tokens, and the train job
(``run_train(TrainConfig(...))``, what ``tokenseek train`` runs)."""

__all__ = ["TokenSeekTrainer", "TrainConfig", "run_train"]

# Lazy: importing transformers' Trainer takes seconds, and every CLI call builds the
# train parser from tokenseek.train.config.TrainConfig.
_WHERE = {"TokenSeekTrainer": "tokenseek.train.trainer", "TrainConfig": "tokenseek.train.config", "run_train": "tokenseek.train.recipe"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
