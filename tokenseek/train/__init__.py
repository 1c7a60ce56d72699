"""Training: a transformers Trainer that back-propagates only kept tokens, and the train job."""

from tokenseek.train.trainer import TokenSeekTrainer

__all__ = ["TokenSeekTrainer"]
