"""See which tokens token seeking keeps and why (paper §4.3, Fig. 4, Fig. 5, Fig. S1).

- :func:`render_example` — one example: ``tokens.html`` with the kept tokens of each
  selection marked, and the attention / gradient maps and score plots as PNGs.
- :func:`render_summary` — a whole score store: where kept tokens fall, which ones, overlaps.
- :func:`render_loss_curves` — training loss of several runs on one chart.
- :func:`run_visualize` — the job of ``tokenseek visualize``: one of the above from a
  :class:`VisualizeConfig`, loading model, data and score store.

All writers take a directory (or file) that the caller publishes atomically, see
:mod:`tokenseek.visualize.outputs`.
"""

from __future__ import annotations

from pathlib import Path

from tokenseek.visualize.config import VisualizeConfig
from tokenseek.visualize.example import ExampleView, compute_example, keep_masks, token_texts


def render_example(view: ExampleView, out_dir: str | Path, tokenizer=None) -> list[str]:
    """Write tokens.html, example.json and the PNGs for ``view`` into ``out_dir``; return the file names."""
    from tokenseek.utils.io import write_json, write_text
    from tokenseek.visualize import plots
    from tokenseek.visualize.html import render_tokens_html

    out = Path(out_dir)
    write_text(out / "tokens.html", render_tokens_html(view, tokenizer))
    plots.plot_attention(view, out / "attention.png")
    plots.plot_gradient_map(view, out / "gradient_map.png")
    plots.plot_context_scores(view, out / "context_score.png")
    plots.plot_gradient_scores(view, out / "gradient_score.png")
    written = ["tokens.html", "attention.png", "gradient_map.png", "context_score.png", "gradient_score.png"]
    if view.layer_gradients:
        plots.plot_layer_gradients(view, out / "gradient_layers.png")
        written.append("gradient_layers.png")
    write_json(
        out / "example.json",
        {
            "position": view.position,
            "record_index": view.record_index,
            "model": view.model_name,
            "prompt_length": view.prompt_length,
            "ratio": view.ratio,
            "alpha": view.alpha,
            "beta": view.beta,
            "select_from": view.select_from,
            "score_source": view.score_source,
            "gradient_layer": f"N-{view.layers_back}",
            "grad_mode": view.grad_mode,
            "tokens": view.tokens,
            "input_ids": view.input_ids,
            "context": [float(x) for x in view.context],
            "gradient": [float(x) for x in view.gradient],
            "combined": [float(x) for x in view.combined],
            "kept": {name: [int(i) for i in mask.nonzero()[0]] for name, mask in view.keep.items()},
            "layer_gradients": {f"N-{k}": [float(x) for x in v] for k, v in view.layer_gradients.items()},
        },
    )
    written.append("example.json")
    return written


def render_summary(summary: dict, out_dir: str | Path) -> list[str]:
    from tokenseek.utils.io import write_json, write_text
    from tokenseek.visualize.plots import plot_positions
    from tokenseek.visualize.summary import summary_markdown

    out = Path(out_dir)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary))
    plot_positions(summary, out / "positions.png")
    return ["summary.json", "summary.md", "positions.png"]


def render_loss_curves(runs: list[dict], path: str | Path) -> None:
    from tokenseek.visualize.plots import plot_loss_curves

    plot_loss_curves(runs, path)


__all__ = [
    "ExampleView", "VisualizeConfig", "compute_example", "keep_masks", "render_example", "render_loss_curves", "render_summary",
    "run_visualize", "token_texts",
]


def run_visualize(cfg: VisualizeConfig) -> dict:
    """See :func:`tokenseek.visualize.job.run_visualize`."""
    from tokenseek.visualize.job import run_visualize as run

    return run(cfg)
