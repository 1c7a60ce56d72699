"""Training: a transformers Trainer that back-propagates only kept tokens, and the train job."""

__all__ = ["TokenSeekTrainer"]


def __getattr__(name: str):
    # Lazy: importing transformers' Trainer takes seconds, and every CLI call builds the
    # train parser from tokenseek.train.config.TrainConfig.
    if name == "TokenSeekTrainer":
        from tokenseek.train.trainer import TokenSeekTrainer

        return TokenSeekTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
