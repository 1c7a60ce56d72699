"""``tokens.html``: the example's text token by token, with each selection's kept tokens marked.

Self-contained (inline CSS, no scripts, no external files). Colours follow the paper's
Fig. 4 (a): context-kept in red, gradient-kept in blue; tokens kept by both are half red,
half blue; the combined (Eq. 5) selection is outlined in green. Hovering a token shows
its scores (``title`` attributes).
"""

from __future__ import annotations

import html

import numpy as np

from tokenseek.visualize.example import ExampleView

NEWLINE_MARK = "\u21b5"  # ↵, shown before every newline so line breaks are visible

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #111; max-width: 1150px; }
h1 { font-size: 20px; margin: 0 0 6px 0; }
h2 { font-size: 15px; margin: 18px 0 6px 0; }
.meta { color: #444; font-size: 13px; margin: 2px 0; }
.legend { font-size: 13px; margin: 10px 0; line-height: 2.1; }
.legend .item { margin-right: 18px; white-space: nowrap; }
.text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13.5px; line-height: 1.85;
        white-space: pre-wrap; word-break: break-word; border: 1px solid #ddd; border-radius: 4px; padding: 10px 12px; background: #fff; }
.tok { border-radius: 2px; }
.tok.prompt { color: #555; }
.tok.response { color: #000; }
.tok.ctx { background: #f5a3a3; }
.tok.grad { background: #a8c6f5; }
.tok.ctx.grad { background: linear-gradient(#f5a3a3 50%, #a8c6f5 50%); }
.tok.comb { outline: 2px solid #1b9e3e; outline-offset: -1px; }
.only .tok.comb { outline: none; background: #a9e2b7; }
.tok.special { font-style: italic; color: #7a4a00; }
.tok .nl { color: #aaa; }
.boundary { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 11px; color: #fff; background: #6b6b6b;
            border-radius: 3px; padding: 1px 5px; margin-right: 3px; }
.panels { display: grid; grid-template-columns: 1fr; gap: 4px; }
table { border-collapse: collapse; font-size: 13px; margin-top: 6px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.kept { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; line-height: 1.9; }
.chip { white-space: pre; border: 1px solid #ccc; border-radius: 3px; padding: 0 2px; background: #fafafa; }
.note { color: #555; font-size: 12px; }
"""

_LABELS = {"context": "context score", "gradient": "gradient score", "combined": "combined score (Eq. 5)"}
_CLASS = {"context": "ctx", "gradient": "grad", "combined": "comb"}


def _display(text: str) -> str:
    """HTML for a token's text: escaped, with a faint ↵ before each newline."""
    escaped = html.escape(text, quote=False)
    return escaped.replace("\n", f'<span class="nl">{NEWLINE_MARK}</span>\n')


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def _titles(view: ExampleView) -> list[str]:
    n = view.n
    ctx_rank, grad_rank, comb_rank = _ranks(view.context), _ranks(view.gradient), _ranks(view.combined)
    titles = []
    for i in range(n):
        kept = [name for name in ("context", "gradient", "combined") if view.keep[name][i]]
        part = "prompt" if i < view.prompt_length else "response"
        titles.append(
            f"#{i} {view.tokens[i]!r} ({part}, id {view.input_ids[i]})\n"
            f"context {view.context[i]:.4g} (rank {ctx_rank[i]}/{n})\n"
            f"gradient {view.gradient[i]:.4g} (rank {grad_rank[i]}/{n})\n"
            f"combined {view.combined[i]:.4f} (rank {comb_rank[i]}/{n})\n"
            f"kept by: {', '.join(kept) if kept else 'none'}"
        )
    return titles


def _tokens_html(view: ExampleView, titles: list[str], special: set[int], show: tuple[str, ...]) -> str:
    parts = []
    for i, text in enumerate(view.tokens):
        if i == view.prompt_length and 0 < view.prompt_length < view.n:
            parts.append('<span class="boundary" title="the prompt ends here; the response (where the loss is computed) starts">response \u25b8</span>')
        classes = ["tok", "prompt" if i < view.prompt_length else "response"]
        classes += [_CLASS[name] for name in show if view.keep[name][i]]
        if view.input_ids[i] in special:
            classes.append("special")
        parts.append(f'<span class="{" ".join(classes)}" data-i="{i}" title="{html.escape(titles[i], quote=True)}">{_display(text)}</span>')
    return "".join(parts)


def _stats_rows(view: ExampleView) -> str:
    rows = []
    for name in ("context", "gradient", "combined"):
        mask = view.keep[name]
        positions = np.flatnonzero(mask)
        in_prompt = int((positions < view.prompt_length).sum())
        mean_rel = float(np.mean(positions / max(view.n - 1, 1))) if len(positions) else float("nan")
        kept_text = " ".join(f'<span class="chip">{html.escape(repr(view.tokens[p])[1:-1])}</span>' for p in positions)
        rows.append(
            f"<tr><td>{_LABELS[name]}</td><td>{len(positions)}</td><td>{in_prompt}</td><td>{len(positions) - in_prompt}</td>"
            f"<td>{mean_rel:.2f}</td><td class=\"kept\">{kept_text}</td></tr>"
        )
    return "\n".join(rows)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def render_tokens_html(view: ExampleView, tokenizer=None) -> str:
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    titles = _titles(view)
    n, k = view.n, view.k
    source = "recomputed for this example" if view.score_source == "recomputed" else f"from the score store {view.score_source}"
    layer = f"input of decoder layer N-{view.layers_back}" + (" (the paper's penultimate-layer activations)" if view.layers_back == 1 else "")
    overlay = _tokens_html(view, titles, special, ("context", "gradient", "combined"))
    panels = "\n".join(
        f'<section><h2>Kept by {_LABELS[name]}</h2><div class="text only" id="panel-{name}">'
        f"{_tokens_html(view, titles, special, (name,))}</div></section>"
        for name in ("context", "gradient", "combined")
    )
    ctx, grad = view.keep["context"], view.keep["gradient"]
    both = int((ctx & grad).sum())
    title = f"TokenSeek: example {view.position} (record {view.record_index})"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">Model: {html.escape(view.model_name or "?")} ({view.num_layers} decoder layers).
{n} tokens: {view.prompt_length} prompt + {n - view.prompt_length} response.</p>
<p class="meta">Keep ratio {view.ratio:g} &rarr; k = {k} of {n} tokens per selection (--select-from {html.escape(view.select_from)}); &alpha; = {view.alpha:g}, &beta; = {view.beta:g}
(Eq. 5: &alpha;&middot;log(context) + &beta;&middot;minmax(gradient)).</p>
<p class="meta">Scores {html.escape(source)}; context = attention received in the last layer (Eq. 3);
gradient = {"&Sigma;|dL/dz|" if view.grad_mode == "abs" else "&Sigma; dL/dz"} over the hidden dimension at the {html.escape(layer)} (Eq. 4).</p>
<div class="legend">
<span class="item"><span class="tok ctx">&nbsp;context&nbsp;</span> kept by context score</span>
<span class="item"><span class="tok grad">&nbsp;gradient&nbsp;</span> kept by gradient score</span>
<span class="item"><span class="tok ctx grad">&nbsp;both&nbsp;</span> kept by both</span>
<span class="item"><span class="tok comb">&nbsp;combined&nbsp;</span> kept by combined score (green outline; green fill in its own panel)</span>
<span class="item"><span class="boundary">response &#9656;</span> prompt/response boundary (prompt text grey)</span>
<span class="item"><span class="tok"><span class="nl">{NEWLINE_MARK}</span></span> newline</span>
</div>
<p class="note">Hover a token for its position, scores and ranks.</p>
<h2>All selections</h2>
<div class="text" id="overlay">{overlay}</div>
<div class="panels">
{panels}
</div>
<h2>Kept tokens</h2>
<table>
<tr><th>selection</th><th>kept</th><th>in prompt</th><th>in response</th><th>mean relative position</th><th>kept tokens, in order</th></tr>
{_stats_rows(view)}
</table>
<p class="note">Context &cap; gradient: {both} token(s) kept by both; Jaccard overlap {_jaccard(ctx, grad):.2f}.
Relative position: 0 = first token, 1 = last token.</p>
</body>
</html>
"""
