"""Dataset-level view of a score store: where kept tokens fall, which tokens are kept, overlaps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tokenseek.errors import TokenSeekError
from tokenseek.models import DEFAULT_MODEL_NAME
from tokenseek.seeking.select import DEFAULT_RATIO, DEFAULT_SELECT_FROM, answer_positions, score_weights, target_positions
from tokenseek.visualize.example import keep_masks, token_texts

NAMES = ("context", "gradient", "combined")


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


PAIRS = {"context_vs_gradient": ("context", "gradient"), "combined_vs_context": ("combined", "context"), "combined_vs_gradient": ("combined", "gradient")}


@dataclass
class _Tally:
    """What the per-example pass accumulates for every selection (and for all tokens)."""

    relative: dict = field(default_factory=lambda: {name: [] for name in (*NAMES, "all tokens")})  # kept positions / (n-1)
    kept_prompt: dict = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    kept_total: dict = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    first_kept: dict = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    response_kept_fraction: dict = field(default_factory=lambda: {name: [] for name in NAMES})
    counters: dict = field(default_factory=lambda: {name: Counter() for name in NAMES})
    occurrences: Counter = field(default_factory=Counter)
    jaccards: dict = field(default_factory=lambda: {key: [] for key in PAIRS})
    pooled: dict = field(default_factory=lambda: {key: [0, 0] for key in PAIRS})  # intersection, union
    in_answer: dict = field(default_factory=lambda: {name: [] for name in (*NAMES, "all targets")})  # kept targets / (targets-1)
    total_tokens: int = 0
    prompt_tokens: int = 0
    prompt_fractions: list = field(default_factory=list)

    def add(self, ex: dict, masks: dict) -> None:
        n = len(ex["input_ids"])
        p = min(int(ex["prompt_length"]), n)
        self.total_tokens += n
        self.prompt_tokens += p
        self.prompt_fractions.append(p / n)
        rel = np.arange(n) / max(n - 1, 1)
        self.relative["all tokens"].append(rel)
        ids = np.asarray(ex["input_ids"])
        self.occurrences.update(ids.tolist())
        for name in NAMES:
            mask = masks[name]
            positions = np.flatnonzero(mask)
            self.relative[name].append(rel[positions])
            self.kept_total[name] += len(positions)
            self.kept_prompt[name] += int((positions < p).sum())
            self.first_kept[name] += int(mask[0])
            if n > p:
                self.response_kept_fraction[name].append(float(mask[p:].mean()))
            self.counters[name].update(ids[positions].tolist())
        has_target = target_positions(ex["labels"])
        self.in_answer["all targets"].append(answer_positions(has_target, has_target))
        for name in NAMES:
            self.in_answer[name].append(answer_positions(masks[name], has_target))
        for key, (a, b) in PAIRS.items():
            self.jaccards[key].append(_jaccard(masks[a], masks[b]))
            self.pooled[key][0] += int((masks[a] & masks[b]).sum())
            self.pooled[key][1] += int((masks[a] | masks[b]).sum())

    def positions(self, name: str) -> np.ndarray:
        return np.concatenate(self.relative[name]) if self.relative[name] else np.zeros(0)

    def kept_in_answer(self, name: str) -> np.ndarray:
        return np.concatenate(self.in_answer[name]) if self.in_answer[name] else np.zeros(0)


# How a summary says where its selections could choose from (--select-from).
_SELECT_FROM_TEXT = {
    "all": "every position (--select-from all)",
    "targets": "positions with a training target only (--select-from targets)",
    "targets-first": "every target first, then the other positions (--select-from targets-first)",
}


def compute_summary(
    data,
    store,
    tokenizer,
    *,
    ratio: float = DEFAULT_RATIO,
    alpha: float | None = None,
    beta: float | None = None,
    select_from: str = DEFAULT_SELECT_FROM,
    bins: int = 20,
    top: int = 20,
) -> dict:
    """Statistics over every example of ``data`` with the selections recomputed from the stored
    scores, from the positions ``select_from`` allows (as training chooses them); ``alpha``/``beta``
    left None take the default for ``select_from``."""
    alpha, beta = score_weights(select_from, alpha, beta)
    tally = _Tally()
    for ex in data.examples:
        row = store.get(ex["index"])
        n = len(ex["input_ids"])
        if len(row["context"]) != n:
            raise TokenSeekError(
                f"the score store {store.path} has {len(row['context'])} scores for example {ex['index']}, which has {n} tokens: "
                "re-score with the same --data/--template/--max-length"
            )
        _, masks = keep_masks(row["context"], row["gradient"], ratio, alpha, beta, labels=ex["labels"], select_from=select_from)
        tally.add(ex, masks)
    examples = len(data.examples)
    return {
        "examples": examples,
        "store": str(store.path),
        "store_model": store.meta.get("model", {}).get("model") or DEFAULT_MODEL_NAME,  # None: the default model
        "store_scoring": store.meta.get("scoring"),
        "data_settings": data.settings,
        "selection": {"ratio": ratio, "alpha": alpha, "beta": beta, "select_from": select_from},
        "tokens": {
            "total": tally.total_tokens,
            "prompt": tally.prompt_tokens,
            "response": tally.total_tokens - tally.prompt_tokens,
            "mean_length": tally.total_tokens / max(examples, 1),
            "mean_prompt_fraction": float(np.mean(tally.prompt_fractions)),
        },
        "share": _shares(tally, examples),
        "positions": _position_histograms(tally, bins),
        "answer_positions": _answer_histograms(tally),
        "overlap": _overlaps(tally),
        "top_tokens": _top_tokens(tally, tokenizer, top),
    }


def _shares(tally: _Tally, examples: int) -> dict:
    """Per selection: how its kept tokens split between prompt and response, and where they sit."""
    share = {}
    for name in NAMES:
        rel = tally.positions(name)
        kept, in_prompt = tally.kept_total[name], tally.kept_prompt[name]
        share[name] = {
            "prompt": in_prompt / max(kept, 1),
            "response": 1 - in_prompt / max(kept, 1),
            "kept": kept,
            "kept_in_prompt": in_prompt,
            "kept_in_response": kept - in_prompt,
            "mean_relative_position": float(rel.mean()) if rel.size else None,
            "median_relative_position": float(np.median(rel)) if rel.size else None,
            "first_token_kept": tally.first_kept[name] / max(examples, 1),
            "response_tokens_kept_fraction": float(np.mean(tally.response_kept_fraction[name])) if tally.response_kept_fraction[name] else None,
        }
    every = tally.positions("all tokens")
    share["all tokens"] = {
        "prompt": tally.prompt_tokens / max(tally.total_tokens, 1),
        "response": 1 - tally.prompt_tokens / max(tally.total_tokens, 1),
        "kept": tally.total_tokens,
        "kept_in_prompt": tally.prompt_tokens,
        "kept_in_response": tally.total_tokens - tally.prompt_tokens,
        "mean_relative_position": float(every.mean()),
        "median_relative_position": float(np.median(every)),
        "first_token_kept": 1.0,
        "response_tokens_kept_fraction": 1.0,
    }
    return share


def _position_histograms(tally: _Tally, bins: int) -> dict:
    edges = np.linspace(0.0, 1.0, bins + 1)
    density, counts = {}, {}
    for name in (*NAMES, "all tokens"):
        c, _ = np.histogram(tally.positions(name), bins=edges)
        counts[name] = c.tolist()
        density[name] = (c / max(c.sum(), 1) / (edges[1] - edges[0])).tolist()
    return {"bin_edges": edges.tolist(), "density": density, "counts": counts}


def _answer_histograms(tally: _Tally, bins: int = 5) -> dict:
    """Per selection: its kept targets by fifth of the answer (each example's targets scaled
    to 0..1), against every target: whether a score prefers the start or the end of answers."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = {"bin_edges": edges.tolist(), "counts": {}, "mean": {}}
    for name in (*NAMES, "all targets"):
        positions = tally.kept_in_answer(name)
        out["counts"][name] = np.histogram(positions, bins=edges)[0].tolist()
        out["mean"][name] = float(positions.mean()) if positions.size else None
    return out


def _overlaps(tally: _Tally) -> dict:
    return {
        key: {
            "mean_jaccard": float(np.mean(values)),
            "median_jaccard": float(np.median(values)),
            "pooled_jaccard": tally.pooled[key][0] / max(tally.pooled[key][1], 1),
        }
        for key, values in tally.jaccards.items()
    }


def _top_tokens(tally: _Tally, tokenizer, top: int) -> dict:
    """The most often kept token ids of each selection, with how often each occurs at all."""
    text_of: dict[int, str] = {}

    def text(token_id: int) -> str:
        if token_id not in text_of:
            text_of[token_id] = token_texts(tokenizer, [token_id])[0]
        return text_of[token_id]

    return {
        name: [
            {
                "token": text(token_id),
                "id": int(token_id),
                "kept": count,
                "share_of_kept": count / max(tally.kept_total[name], 1),
                "occurrences": tally.occurrences[token_id],
                "kept_rate": count / max(tally.occurrences[token_id], 1),
            }
            for token_id, count in tally.counters[name].most_common(top)
        ]
        for name in NAMES
    }


def _code(text: str) -> str:
    shown = repr(text)[1:-1].replace("|", "\\|")
    return f"`` {shown} ``" if "`" in shown else f"`{shown}`"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _share_rows(counts: dict, edges: list, digits: int) -> list[str]:
    """Table rows, one per bin: each selection's share of its own kept tokens in that bin."""
    totals = {name: max(sum(c), 1) for name, c in counts.items()}
    rows = []
    for b in range(len(edges) - 1):
        cells = " | ".join(f"{100 * c[b] / totals[name]:.1f} %" for name, c in counts.items())
        rows.append(f"| {edges[b]:.{digits}f}-{edges[b + 1]:.{digits}f} | {cells} |")
    return rows


def summary_markdown(summary: dict) -> str:
    sel = summary["selection"]
    tokens = summary["tokens"]
    lines = [
        "# Token seeking summary",
        "",
        f"{summary['examples']} examples from the score store `{summary['store']}` (model {summary['store_model']}); "
        f"{tokens['total']} tokens, mean length {tokens['mean_length']:.1f}, "
        f"{_pct(tokens['prompt'] / max(tokens['total'], 1))} of them in prompts.",
        f"Selections recomputed from the stored scores at ratio {sel['ratio']:g}, alpha {sel['alpha']:g}, beta {sel['beta']:g}, "
        f"from {_SELECT_FROM_TEXT[sel.get('select_from', 'all')]}: "
        "*context* = top-k by attention received (Eq. 3), *gradient* = top-k by gradient score (Eq. 4), "
        "*combined* = top-k by Eq. 5.",
        "",
        "## Where kept tokens fall",
        "",
        "| selection | kept | in prompt | in response | mean rel. position | median rel. position | first token kept | response tokens kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary["share"].items():
        lines.append(
            f"| {name} | {row['kept']} | {row['kept_in_prompt']} ({_pct(row['prompt'])}) | {row['kept_in_response']} ({_pct(row['response'])}) "
            f"| {row['mean_relative_position']:.3f} | {row['median_relative_position']:.3f} | {_pct(row['first_token_kept'])} "
            f"| {_pct(row['response_tokens_kept_fraction'])} |"
        )
    lines += [
        "",
        "Relative position: 0 = first token, 1 = last token of the example. *all tokens* is the baseline "
        "(what a uniform random choice would give). *response tokens kept*: mean over examples of the "
        "fraction of the response's tokens that the selection keeps.",
        "",
        "Histogram of relative positions (share of kept tokens per bin):",
        "",
    ]
    edges = summary["positions"]["bin_edges"]
    names = list(summary["positions"]["counts"].keys())
    lines.append("| bin | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    lines += _share_rows(summary["positions"]["counts"], edges, 2)
    answer = summary["answer_positions"]
    names = list(answer["counts"].keys())
    lines += [
        "",
        "## Where in the answer the kept targets fall",
        "",
        "Kept positions with a training target, by fifth of each example's answer (0 = the position that predicts "
        "the answer's first token, 1 = its last); *all targets* is every target, what a uniform choice would give.",
        "",
        "| part of the answer | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    edges = answer["bin_edges"]
    lines += _share_rows(answer["counts"], edges, 1)
    lines.append("| mean | " + " | ".join("-" if answer["mean"][n] is None else f"{answer['mean'][n]:.3f}" for n in names) + " |")
    lines += ["", "## Overlap (Jaccard index of the kept sets)", "", "| pair | mean per example | median | pooled |", "|---|---:|---:|---:|"]
    for key, row in summary["overlap"].items():
        lines.append(f"| {key.replace('_vs_', ' vs ')} | {row['mean_jaccard']:.3f} | {row['median_jaccard']:.3f} | {row['pooled_jaccard']:.3f} |")
    lines += ["", "## Most frequently kept tokens", ""]
    for name, rows in summary["top_tokens"].items():
        lines += [f"### {name}", "", "| token | kept | share of kept | occurrences | kept rate |", "|---|---:|---:|---:|---:|"]
        for row in rows:
            lines.append(f"| {_code(row['token'])} | {row['kept']} | {_pct(row['share_of_kept'])} | {row['occurrences']} | {_pct(row['kept_rate'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
