"""TRL's ``SFTTrainer`` with token ditching.

TRL tokenises the dataset and builds ``labels`` (-100 outside ``completion_mask`` /
``assistant_masks``) and its collator pads them; this module only adds a keep mask to each
collated batch and replaces the training loss with the ditched loss::

    from tokenseek.integrations.trl import TokenSeekSFTTrainer
    trainer = TokenSeekSFTTrainer(model=..., args=SFTConfig(...), train_dataset=..., ratio=0.1)

Selection: ``"random"`` (TokenTune), or a scored strategy (``"tokenseek"`` ...) either from a
score store made offline over TRL's own tokenised examples (``scores=DIR``: scored on first
use, reused while model and data match) or online, inside each step with the current weights
(``seeking="online"``). Evaluation keeps TRL's own full-token loss. Gradient checkpointing
(TRL's default) works: the kept pass reads a frozen context cache.
"""

from __future__ import annotations

from tokenseek.errors import TokenSeekError
from tokenseek.train.selection import KeepingCollator, OfflineKeep, SelectionOptions, example_key
from tokenseek.train.trainer import SelectingMixin

try:
    from trl import SFTTrainer
except ImportError as exc:  # an optional extra
    raise ImportError("tokenseek.integrations.trl needs TRL: pip install 'tokenseek[trl]'") from exc


class TokenSeekSFTTrainer(SelectingMixin, SFTTrainer):
    """``SFTTrainer`` that back-propagates only the kept tokens of each training example.

    Extra keyword arguments: those of :class:`tokenseek.train.selection.SelectionOptions` —
    ``ratio`` (default 0.1), ``selection`` (``random``, or a scored strategy: ``tokenseek``,
    ``context``, ``gradient``, ``mixed``, ``probe``), ``select_from`` (``targets``: only
    positions with a training target; ``all``; ``targets-first``: those, then the rest of the
    budget from the others), ``alpha``/``beta`` (Eq. 5), ``scores`` (score
    store directory for offline scored selections), ``seeking`` (``offline`` or ``online``:
    score inside each step, no store), ``loss_norm`` (``token`` or ``example``),
    ``loss_chunk`` (LM-head rows at a time), ``context_chunk`` (tokens per call of the
    no-grad context pass).
    """

    def __init__(self, *args, **kwargs):
        options = SelectionOptions.pop_from(kwargs) or SelectionOptions()  # checked before TRL's slow set-up
        super().__init__(*args, **kwargs)
        if self.padding_free:
            raise TokenSeekError("token ditching needs padded batches with an attention mask: set padding_free=False and packing=False in SFTConfig")
        self._init_selection(options, max_length=self.args.max_length, source="trl")


__all__ = ["KeepingCollator", "OfflineKeep", "TokenSeekSFTTrainer", "example_key"]
