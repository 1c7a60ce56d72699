"""What ``tokenseek visualize`` / :func:`tokenseek.visualize.job.run_visualize` shows.

The fields made with ``option`` are the command's own flags; the plain fields are the model,
data and selection settings it shares with ``tokenseek train`` (the CLI fills them from
TrainConfig's flags, so they mean the same thing in both commands; a test compares defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenseek.data.templates import DEFAULT_TEMPLATE
from tokenseek.data.tokenize import DEFAULT_MAX_LENGTH
from tokenseek.errors import TokenSeekError
from tokenseek.seeking.config import GRAD_LAYERS
from tokenseek.seeking.gradient import GRAD_MODES
from tokenseek.seeking.select import DEFAULT_RATIO, DEFAULT_SELECT_FROM, check_selection
from tokenseek.utils.options import check_options, option


@dataclass
class VisualizeConfig:
    output: str | None = option(None, "where to write, always needed: a directory (one example, --summary), or the image file for --runs (e.g. loss.png)")
    index: int | None = option(
        None,
        "the example to show: its 0-based position in the tokenized data (after --limit, and after dropping "
        "examples with no response token left; the record index is printed in the output)",
        minimum=0,
    )
    scores: str | None = option(None, "score store from `tokenseek score`: highlight its stored scores (required with --summary)")
    summary: bool = option(False, "statistics over every example of the score store instead of one example")
    runs: list[str] | None = option(None, "plot the training loss of these `tokenseek train` output dirs on one chart", several=True, metavar="RUN_DIR")
    grad_layer: int | None = option(
        None, "gradient at the input of layer N-1, N-2 or N-3", choices=GRAD_LAYERS, shown="the score store's, else 1"
    )
    grad_mode: str | None = option(None, "gradient score reduction", choices=GRAD_MODES, shown="the score store's, else abs")
    layers: bool = option(False, "also plot gradient scores from layers N-1, N-2, N-3 (gradient_layers.png, paper Fig. S1)")

    model: str | None = None  # Hub id, model folder or .gguf; None: the default model
    data: str | None = None  # None: the built-in demo set
    format: str = "auto"
    split: str = "train"
    subset: str | None = None
    fields: str | None = None
    limit: int | None = None
    template: str = DEFAULT_TEMPLATE
    max_length: int = DEFAULT_MAX_LENGTH
    train_on_prompt: bool = False
    ratio: float = DEFAULT_RATIO
    alpha: float | None = None  # None: the default for select_from (select.DEFAULT_WEIGHTS)
    beta: float | None = None
    select_from: str = DEFAULT_SELECT_FROM

    def __post_init__(self) -> None:
        check_options(self)
        self._check_mode()
        if self.mode != "runs":
            check_selection("tokenseek", self.ratio, self.alpha, self.beta, self.select_from)

    @property
    def mode(self) -> str:
        """What to show: one example, a score store's summary or the loss curves of runs."""
        return "runs" if self.runs else "summary" if self.summary else "example"

    def _check_mode(self) -> None:
        """One thing to show, with the inputs it needs and no option it would ignore."""
        if not self.output:
            raise TokenSeekError("--output is required: a directory for the example or --summary files, or the image file for --runs (e.g. loss.png)")
        if self.runs:
            if self.index is not None or self.summary or self.scores:
                raise TokenSeekError("--runs plots loss curves only: drop --index/--summary/--scores, or run those separately")
        elif self.summary:
            if self.index is not None:
                raise TokenSeekError("--summary covers every example: drop --index (or drop --summary to show one example)")
            if not self.scores:
                raise TokenSeekError("--summary needs a score store: score the data with `tokenseek score --out S` and pass --scores S")
            if self.layers or self.grad_layer is not None or self.grad_mode is not None:
                raise TokenSeekError(
                    "--summary reads the store's scores as they were made: drop --layers/--grad-layer/--grad-mode "
                    "(score again with `tokenseek score --grad-layer` for another layer)"
                )
        elif self.index is None:
            raise TokenSeekError("say what to show: --index I for one example, --summary with --scores for a score store, or --runs for loss curves")
