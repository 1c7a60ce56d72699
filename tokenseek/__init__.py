"""TokenSeek: memory-efficient fine-tuning by instance-aware token ditching.

Public API for your own training loop::

    from tokenseek import seek, ditched_loss
    result = seek(model, input_ids, labels, attention_mask)      # which tokens matter
    loss = ditched_loss(model, input_ids, labels, result.keep, attention_mask)
    loss.backward()                                              # only kept tokens

and :class:`tokenseek.train.TokenSeekTrainer` for transformers' Trainer.
"""

from tokenseek.ditching import ditched_loss
from tokenseek.seeking import seek

__version__ = "0.1.0"
__all__ = ["ditched_loss", "seek", "__version__"]
