"""PNG figures (matplotlib's Agg canvas, no display, no pyplot global state).

Panel letters follow the paper's Fig. 4: (b) attention map, (c) gradient map,
(d) context scores, (e) gradient scores; Fig. S1 (gradient scores from layers N-1,
N-2, N-3) and Fig. 5 (training loss curves).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenseek.errors import TokenSeekError
from tokenseek.visualize.example import ExampleView

CONTEXT_COLOR = "#d62728"  # red, as in the paper
GRADIENT_COLOR = "#1f77b4"  # blue
COMBINED_COLOR = "#2ca02c"  # green
LAYER_COLORS = {1: "#1f77b4", 2: "#ff7f0e", 3: "#2ca02c"}  # Fig. S1: N-1 blue, N-2 orange, N-3 green
DPI = 110


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TokenSeekError("`tokenseek visualize` draws its figures with matplotlib: pip install 'tokenseek[plots]'") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: str | Path) -> None:
    fig.savefig(path, format=Path(path).suffix.lstrip(".") or "png", dpi=DPI)


def _log_norm(values: np.ndarray, floor_quantile: float = 0.01):
    from matplotlib.colors import LogNorm

    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return LogNorm(vmin=1e-12, vmax=1.0)
    vmax = float(positive.max())
    vmin = max(float(np.quantile(positive, floor_quantile)), vmax * 1e-8)
    return LogNorm(vmin=min(vmin, vmax * 0.999), vmax=vmax)


def _boundary(ax, view: ExampleView, *, both: bool = False) -> None:
    """Mark where the prompt ends (dashed line) on one or both axes."""
    if 0 < view.prompt_length < view.n:
        x = view.prompt_length - 0.5
        ax.axvline(x, color="#555555", linestyle="--", linewidth=0.9)
        if both:
            ax.axhline(x, color="#555555", linestyle="--", linewidth=0.9)


def _shade_prompt(ax, view: ExampleView) -> None:
    if view.prompt_length > 0:
        ax.axvspan(-0.5, min(view.prompt_length, view.n) - 0.5, color="#000000", alpha=0.06, linewidth=0, label="prompt")
    _boundary(ax, view)


def plot_attention(view: ExampleView, path: str | Path) -> None:
    """(b) Head-averaged last-layer attention, log colour scale; the causally masked upper triangle is blank."""
    if view.attention is None:
        raise ValueError("the view has no attention map")
    att = np.ma.masked_less_equal(view.attention, 0.0)
    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["magma_r"].copy()
    cmap.set_bad("#ffffff")
    image = ax.imshow(att, cmap=cmap, norm=_log_norm(view.attention), interpolation="nearest", aspect="equal")
    _boundary(ax, view, both=True)
    ax.set_xlabel("key position j (attended to)")
    ax.set_ylabel("query position i (attending)")
    ax.set_title(f"(b) Last-layer attention, average of heads (log scale)\n{view.n} tokens, dashed: prompt | response", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85, label="attention weight $A_{ij}$")
    _save(fig, path)


def plot_gradient_map(view: ExampleView, path: str | Path) -> None:
    """(c) |dL/dz| per token and hidden unit at the scored layer (log colour scale)."""
    if view.grad_map is None:
        raise ValueError("the view has no gradient map")
    magnitude = np.abs(view.grad_map).T  # [d, n]: tokens along x, like the score plots
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("#ffffff")
    image = ax.imshow(np.ma.masked_less_equal(magnitude, 0.0), cmap=cmap, norm=_log_norm(magnitude), interpolation="nearest", aspect="auto")
    _boundary(ax, view)
    ax.set_xlabel("token position")
    ax.set_ylabel("hidden unit")
    ax.set_title(
        f"(c) Gradient map |dL/dz| at the input of layer N-{view.layers_back} (log scale)\n"
        f"[{view.n} tokens x {magnitude.shape[0]} hidden units], dashed: prompt | response; blank = exactly 0",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, shrink=0.9, label="|gradient|")
    _save(fig, path)


def _score_plot(view: ExampleView, values: np.ndarray, keep: np.ndarray, color: str, title: str, ylabel: str, path, *, log: bool) -> None:
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    positions = np.arange(view.n)
    _shade_prompt(ax, view)
    plotted = np.maximum(values, np.finfo(np.float32).tiny) if log else values
    ax.plot(positions, plotted, color=color, linewidth=1.0, label="score")
    kept = np.flatnonzero(keep)
    ax.scatter(kept, plotted[kept], s=16, color=color, edgecolor="black", linewidth=0.5, zorder=3, label=f"kept (top {len(kept)})")
    if len(kept):
        threshold = float(plotted[kept].min())
        ax.axhline(threshold, color="black", linestyle=":", linewidth=1.0, label=f"keep threshold {threshold:.3g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlim(-0.5, view.n - 0.5)
    ax.set_xlabel("token position")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def plot_context_scores(view: ExampleView, path: str | Path) -> None:
    """(d) Attention received per position (log scale), kept tokens and threshold marked."""
    _score_plot(
        view,
        np.asarray(view.context, dtype=np.float64),
        view.keep["context"],
        CONTEXT_COLOR,
        f"(d) Context score: attention received in the last layer, Eq. 3 (log scale)\n"
        f"kept by context at ratio {view.ratio:g}: {int(view.keep['context'].sum())} of {view.n}; shaded: prompt",
        "context score",
        path,
        log=True,
    )


def plot_gradient_scores(view: ExampleView, path: str | Path) -> None:
    """(e) Gradient score per position, kept tokens and threshold marked."""
    _score_plot(
        view,
        np.asarray(view.gradient, dtype=np.float64),
        view.keep["gradient"],
        GRADIENT_COLOR,
        f"(e) Gradient score at the input of layer N-{view.layers_back}, Eq. 4 ({view.grad_mode})\n"
        f"kept by gradient at ratio {view.ratio:g}: {int(view.keep['gradient'].sum())} of {view.n}; shaded: prompt",
        "gradient score",
        path,
        log=False,
    )


def plot_layer_gradients(view: ExampleView, path: str | Path) -> None:
    """Fig. S1: gradient scores at the inputs of layers N-1, N-2, N-3 on one plot."""
    if not view.layer_gradients:
        raise ValueError("the view has no per-layer gradient scores")
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    _shade_prompt(ax, view)
    positions = np.arange(view.n)
    for back, values in sorted(view.layer_gradients.items()):
        ax.plot(positions, values, color=LAYER_COLORS.get(back), linewidth=1.0, label=f"input of layer N-{back}")
    ax.set_xlim(-0.5, view.n - 0.5)
    ax.set_xlabel("token position")
    ax.set_ylabel("gradient score")
    ax.set_title(f"Gradient scores from different layers (cf. paper Fig. S1), {view.grad_mode}; shaded: prompt", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def plot_positions(summary: dict, path: str | Path) -> None:
    """Histogram of kept tokens' relative positions per selection, and prompt/response shares."""
    fig = _figure(11.0, 4.0)
    left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
    edges = np.asarray(summary["positions"]["bin_edges"])
    width = edges[1] - edges[0]
    colors = {"context": CONTEXT_COLOR, "gradient": GRADIENT_COLOR, "combined": COMBINED_COLOR, "all tokens": "#7f7f7f"}
    for name, hist in summary["positions"]["density"].items():
        style = {"linestyle": "--"} if name == "all tokens" else {}
        left.stairs(hist, edges, color=colors.get(name), linewidth=1.6, label=name, **style)
    boundary = summary["tokens"]["mean_prompt_fraction"]
    left.axvline(boundary, color="#555555", linestyle=":", linewidth=1.0, label=f"mean prompt end ({boundary:.2f})")
    left.set_xlim(0, 1)
    left.set_xlabel("relative position in the sequence (0 = first token, 1 = last)")
    left.set_ylabel(f"density (bins of {width:.2f})")
    left.set_title(f"Where kept tokens fall ({summary['examples']} examples, ratio {summary['selection']['ratio']:g})", fontsize=10)
    left.legend(fontsize=8)

    names = list(summary["share"].keys())
    prompt = [summary["share"][name]["prompt"] for name in names]
    response = [summary["share"][name]["response"] for name in names]
    y = np.arange(len(names))
    right.barh(y, prompt, color="#bbbbbb", label="prompt")
    right.barh(y, response, left=prompt, color="#555555", label="response")
    for yi, p in zip(y, prompt):
        right.text(0.01, yi, f"{p:.0%}", va="center", fontsize=8)
        right.text(0.99, yi, f"{1 - p:.0%}", va="center", ha="right", fontsize=8, color="white")
    right.set_yticks(y, names)
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_xlabel("share of kept tokens")
    right.set_title("Kept tokens in prompt vs response", fontsize=10)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    _save(fig, path)


def plot_loss_curves(runs: list[dict], path: str | Path) -> None:
    """Fig. 5: the training loss of several runs on one chart."""
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    for run in runs:
        steps = [point["step"] for point in run["curve"]]
        losses = [point["loss"] for point in run["curve"]]
        ax.plot(steps, losses, linewidth=1.4, marker="o" if len(steps) < 20 else None, markersize=3, label=run["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_ratio_sweep(panels: list[dict], path: str | Path) -> None:
    """Fig. 3: a metric against the kept-token ratio, one line per selection (mean over seeds,
    bars from the lowest to the highest seed), one panel per metric, with the full-token
    reference as a dashed line.

    ``panels``: ``[{"ylabel", "series": [{"label", "points": [(ratio, mean, low, high), ...]}],
    "reference": {"label", "value"} | None}]``.
    """
    fig = _figure(5.0 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for series in panel["series"]:
            ratios, means, lows, highs = (np.array(v, dtype=float) for v in zip(*series["points"]))
            bars = np.vstack([means - lows, highs - means])
            ax.errorbar(100 * ratios, means, yerr=bars, marker="o", markersize=4, capsize=3, linewidth=1.4, label=series["label"])
        reference = panel.get("reference")
        if reference is not None:
            ax.axhline(reference["value"], color="0.4", linestyle="--", linewidth=1, label=reference["label"])
        ax.set_xlabel("ratio: % of each example's tokens back-propagated")
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Quality against ratio (mean; bars: min–max over seeds)", fontsize=10)
    _save(fig, path)
