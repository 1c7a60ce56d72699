"""One visualize job, the library side of ``tokenseek visualize``: the kept tokens of one
example, statistics over a score store, or the loss curves of runs. Outputs are written to a
staging place and published whole, so a failure leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

from tokenseek.errors import TokenSeekError
from tokenseek.visualize.config import VisualizeConfig


def run_visualize(cfg: VisualizeConfig) -> dict:
    """Write what ``cfg`` asks for; return ``{"mode", "output", "written", "message"}`` (the
    message is the line the CLI prints) plus the mode's own details."""
    return {"example": _show_example, "summary": _show_summary, "runs": _plot_runs}[cfg.mode](cfg)


def _tokenized(cfg: VisualizeConfig, tokenizer):
    from tokenseek.data import records_from, tokenize_with

    return tokenize_with(records_from(cfg), tokenizer, cfg)


def _gradient_setting(cfg: VisualizeConfig, store) -> tuple[int, str]:
    """The gradient layer and reduction to show: the flags, else the store's, else N-1 and abs.
    With a store, asking for another one is an error (its scores were made one way)."""
    scoring = store.meta.get("scoring", {}) if store else {}
    stored = (scoring.get("layers_back", 1), scoring.get("grad_mode", "abs"))
    wanted = (cfg.grad_layer or stored[0], cfg.grad_mode or stored[1])
    if store is not None and wanted != stored:
        raise TokenSeekError(
            f"the score store {cfg.scores} holds gradients at layer N-{stored[0]} ({stored[1]}): "
            "drop --grad-layer/--grad-mode to use them, or drop --scores to recompute at another layer"
        )
    return wanted


def _show_example(cfg: VisualizeConfig) -> dict:
    from tokenseek.models import DEFAULT_MODEL_NAME, load_model, load_tokenizer
    from tokenseek.seeking.store import ScoreStore
    from tokenseek.visualize import compute_example, render_example
    from tokenseek.visualize.outputs import EXAMPLE_FILES, staged_dir

    tokenizer = load_tokenizer(cfg.model)
    data = _tokenized(cfg, tokenizer)
    if cfg.index >= len(data):
        raise TokenSeekError(
            f"--index {cfg.index} is out of range: the tokenized data has {len(data)} examples, so give 0..{len(data) - 1}"
            + (" (or raise --limit)" if cfg.limit is not None else "")
        )
    example = data.examples[cfg.index]
    store = ScoreStore.open(cfg.scores, data=data) if cfg.scores else None
    if store is not None:
        store.require_gradient("visualize (it shows the gradient score)")
    layers_back, grad_mode = _gradient_setting(cfg, store)

    model, tokenizer = load_model(cfg.model)
    if store is not None:
        store.check_model(model, cfg.model)
    view = compute_example(
        model,
        tokenizer,
        example,
        position=cfg.index,
        ratio=cfg.ratio,
        alpha=cfg.alpha,
        beta=cfg.beta,
        select_from=cfg.select_from,
        stored=store.get(example["index"]) if store else None,
        score_source=str(cfg.scores) if cfg.scores else "recomputed",
        layers_back=layers_back,
        grad_mode=grad_mode,
        layers=cfg.layers,
        model_name=cfg.model or DEFAULT_MODEL_NAME,
    )
    with staged_dir(cfg.output, EXAMPLE_FILES) as tmp:
        written = render_example(view, tmp, tokenizer)
    message = (
        f"example {cfg.index} (record {view.record_index}, {view.n} tokens, k = {view.k}): "
        f"wrote {', '.join(written)} to {cfg.output}"
    )
    return {"mode": "example", "output": cfg.output, "written": written, "message": message, "record_index": view.record_index, "k": view.k}


def _show_summary(cfg: VisualizeConfig) -> dict:
    from tokenseek.models import load_tokenizer
    from tokenseek.seeking.store import ScoreStore
    from tokenseek.visualize import render_summary
    from tokenseek.visualize.outputs import SUMMARY_FILES, staged_dir
    from tokenseek.visualize.summary import compute_summary

    tokenizer = load_tokenizer(cfg.model)
    data = _tokenized(cfg, tokenizer)
    store = ScoreStore.open(cfg.scores, data=data)
    store.require_gradient("visualize (it shows the gradient score)")
    summary = compute_summary(data, store, tokenizer, ratio=cfg.ratio, alpha=cfg.alpha, beta=cfg.beta, select_from=cfg.select_from)
    with staged_dir(cfg.output, SUMMARY_FILES) as tmp:
        written = render_summary(summary, tmp)
    share = summary["share"]
    message = (
        f"{summary['examples']} examples; kept tokens in the response: "
        + ", ".join(f"{name} {100 * share[name]['response']:.1f} %" for name in ("context", "gradient", "combined"))
        + f" (all tokens {100 * share['all tokens']['response']:.1f} %); wrote {', '.join(written)} to {cfg.output}"
    )
    return {"mode": "summary", "output": cfg.output, "written": written, "message": message, "summary": summary}


def _plot_runs(cfg: VisualizeConfig) -> dict:
    from tokenseek.visualize import render_loss_curves
    from tokenseek.visualize.outputs import IMAGE_SUFFIXES, staged_file
    from tokenseek.visualize.runs import load_runs

    output = Path(cfg.output)
    if output.is_dir():
        output = output / "loss.png"
    elif output.suffix.lower() not in IMAGE_SUFFIXES:
        raise TokenSeekError(f"--output {cfg.output} for --runs must be an image file ({', '.join(IMAGE_SUFFIXES)}), e.g. loss.png")
    runs = load_runs(cfg.runs)
    with staged_file(output) as tmp:
        render_loss_curves(runs, tmp)
    message = f"plotted {len(runs)} run(s) ({', '.join(r['label'] for r in runs)}) into {output}"
    return {"mode": "runs", "output": str(output), "written": [output.name], "message": message}
