"""Turn per-token scores into a keep mask: which tokens of an example are back-propagated.

Every strategy keeps exactly ``ceil(ratio * n)`` of an example's n real tokens
(padding is never in an example), so strategies differ only in *which* tokens.
"""

from __future__ import annotations

import math

import numpy as np

from tokenseek.errors import TokenSeekError

STRATEGIES = ("full", "random", "first", "tokenseek", "context", "context-residual", "gradient", "mixed", "probe")
# (α, β) of the strategies that fix them; the others use the user's --alpha / --beta.
SCORE_WEIGHTS = {"random": (0.0, 0.0), "context": (1.0, 0.0), "context-residual": (1.0, 0.0), "gradient": (0.0, 1.0)}
# The default share of each example's tokens kept, for every entry point (CLI, TRL trainer,
# seek(), online seeking, stores, views).
DEFAULT_RATIO = 0.1
# Where the kept tokens may come from: every real token (the paper's and TokenTune's rule);
# only positions whose next token is a training target (the loss exists nowhere else), the
# budget capped at their number; or those first and the rest of the budget from the other
# positions (targets-first: every loss term, plus gradients through the context they read).
SELECT_FROM = ("targets", "all", "targets-first")
DEFAULT_SELECT_FROM = "targets"
# Eq. 5's weights (α, β) where none are given, by where the kept tokens come from; only α:β
# matters. Ranking every position: the paper's (1, 1), its [5, 5]. Ranking the targets, the
# context term alone did best and the gradient term hurt, since among targets it picks the
# hardest tokens (experiments/alpha_beta_targets.yaml, docs/TRAINING.md "Which selection
# settings to use").
DEFAULT_WEIGHTS = {"targets": (1.0, 0.0), "targets-first": (1.0, 0.0), "all": (1.0, 1.0)}
# When the scores are made: once before training (a store) or inside each step.
SEEKING = ("offline", "online")
# Strategies that need stored context/gradient scores.
SCORED = ("tokenseek", "context", "context-residual", "gradient", "mixed", "probe")
# The selections online seeking can make inside the step.
ONLINE_STRATEGIES = ("tokenseek", "context", "context-residual", "gradient", "mixed")


def reads_gradient(strategy: str, alpha: float, beta: float) -> bool:
    """Whether ``strategy`` with these (resolved) weights ranks by the gradient score at all; if
    not, scoring can skip its partial backward (a store of context scores serves it)."""
    if strategy in SCORE_WEIGHTS or strategy == "tokenseek":
        return SCORE_WEIGHTS.get(strategy, (alpha, beta))[1] > 0
    return strategy in SCORED


def score_weights(select_from: str, alpha: float | None = None, beta: float | None = None) -> tuple[float, float]:
    """``(alpha, beta)``, each that is None replaced by the default for ``select_from``."""
    if select_from not in DEFAULT_WEIGHTS:
        raise TokenSeekError(f"unknown --select-from {select_from!r}: choose one of {', '.join(SELECT_FROM)}")
    default_alpha, default_beta = DEFAULT_WEIGHTS[select_from]
    return (default_alpha if alpha is None else alpha, default_beta if beta is None else beta)


def select_from_of(candidates, fill: bool) -> str:
    """The ``--select-from`` that :func:`candidate_positions` turns into ``candidates`` and ``fill``."""
    if candidates is None:
        return "all"
    return "targets-first" if fill else "targets"


def keep_count(length: int, ratio: float) -> int:
    return max(1, min(length, math.ceil(ratio * length - 1e-9)))


def check_selection(strategy: str, ratio: float, alpha: float | None = None, beta: float | None = None, select_from: str = "all") -> None:
    unset = [f"--{name}" for name, value in (("alpha", alpha), ("beta", beta)) if value is None]
    alpha, beta = score_weights(select_from, alpha, beta)
    if strategy not in STRATEGIES:
        raise TokenSeekError(f"unknown --selection {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1) or math.isnan(ratio):
        raise TokenSeekError(f"--ratio must be in (0, 1], got {ratio}")
    if strategy == "tokenseek" and alpha == 0 and beta == 0:
        why = f" ({' and '.join(unset)} unset: 0 by default with --select-from {select_from})" if unset else ""
        raise TokenSeekError(f"--alpha and --beta are both 0{why}, so every token scores the same: make one of them positive")
    if alpha < 0 or beta < 0:
        raise TokenSeekError(f"--alpha and --beta must be >= 0, got {alpha} and {beta}")


def unread_settings(strategy: str, ratio: float) -> dict[str, str]:
    """The selection settings ``strategy`` never reads, each with the reason (for the warnings of
    the train job and the trainers' keywords; the caller drops those left at their defaults)."""
    if strategy == "full":
        why = dict.fromkeys(("alpha", "beta", "select_from"), "full selection back-propagates every token")
        if ratio != 1.0:  # 1.0 says the same as full
            why["ratio"] = why["alpha"]
        return why
    if strategy in SCORE_WEIGHTS:
        return dict.fromkeys(("alpha", "beta"), f"{strategy} selection fixes its own score weights")
    if strategy == "first":
        return dict.fromkeys(("alpha", "beta"), "first selection ranks by position, not by score")
    if strategy == "probe":
        return {"ratio": "the probe keeps its own share of the tokens"}
    return {}


def minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 0:
        return np.zeros_like(values, dtype=np.float64)
    return (values - lo) / (hi - lo)


def combined_score(context: np.ndarray, gradient: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Eq. 5: ``alpha * log(context) + beta * minmax(gradient)``.

    Only the ratio alpha:beta matters for which tokens win *within* an example up to the
    different ranges of the two terms, so (1, 1) here is the paper's (5, 5).
    """
    context = np.asarray(context, dtype=np.float64)
    gradient = np.asarray(gradient, dtype=np.float64)
    if not (np.isfinite(context).all() and np.isfinite(gradient).all()):
        raise TokenSeekError("the stored scores contain NaN or infinite values: re-run `tokenseek score` on this data")
    # Attention received is > 0 for every real token (it attends to itself); the floor guards log(0).
    return alpha * np.log(np.maximum(context, 1e-12)) + beta * minmax(gradient)


def _top(score: np.ndarray, k: int) -> np.ndarray:
    # Stable: ties go to the earlier position, so selection is deterministic.
    return np.argsort(-score, kind="stable")[:k]


def target_positions(labels) -> np.ndarray:
    """Bool mask of positions p whose next token p+1 is a training target (label != -100)."""
    labels = np.asarray(labels)
    has_target = np.zeros(len(labels), dtype=bool)
    has_target[:-1] = labels[1:] != -100
    return has_target


def ranking_needed(labels, ratio: float, select_from: str = DEFAULT_SELECT_FROM) -> bool:
    """Whether an example's budget leaves a choice: False when it covers every candidate position
    (every position with a target, or every token), so that any selection keeps them all."""
    budget, targets = keep_count(len(labels), ratio), int(target_positions(labels).sum())
    if select_from == "targets":
        return budget < targets
    if select_from == "targets-first":  # a choice among the targets, or among the rest
        return budget < len(labels) and budget != targets
    return budget < len(labels)


def candidate_positions(labels, select_from: str) -> dict:
    """:func:`select_keep`'s ``candidates`` and ``fill`` for ``--select-from`` on one example's labels."""
    if select_from == "all":
        return {"candidates": None, "fill": False}
    return {"candidates": target_positions(labels), "fill": select_from == "targets-first"}


NOTHING_TO_RANK = "every example's budget covers all its candidate positions, so every selection keeps them all: nothing is scored"


def scores_needed(label_rows, ratio: float, strategy: str, select_from: str = DEFAULT_SELECT_FROM) -> bool:
    """Whether a scored selection has anything to rank in these examples (their ``labels``); if
    every budget covers all candidates, scoring would be wasted time. ``probe`` ignores the ratio."""
    return strategy == "probe" or any(ranking_needed(labels, ratio, select_from) for labels in label_rows)


def select_keep(
    length: int,
    ratio: float,
    strategy: str = "random",
    *,
    context: np.ndarray | None = None,
    gradient: np.ndarray | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    seed: int = 0,
    index: int = 0,
    explore: float = 0.5,
    band: tuple[float, float] = (0.4, 0.5),
    candidates: np.ndarray | None = None,
    fill: bool = False,
) -> np.ndarray:
    """A bool keep mask of length ``length`` for one example.

    - ``full``: every token (ordinary training).
    - ``random``: TokenTune — k random tokens, seeded by (seed, example index).
    - ``first``: the k earliest positions — a positional control for the context score,
      which favours early tokens (with ``--select-from targets``: the start of the answer).
    - ``context`` / ``gradient`` / ``tokenseek``: top-k by context score, gradient score, or Eq. 5.
    - ``context-residual``: top-k by the context score with its trend over position taken out
      (:func:`position_residual`): which tokens get more attention than their position explains.
    - ``mixed``: top (1-explore)·k by Eq. 5 plus a random explore·k of the rest (paper S7 future work).
    - ``probe``: the misestimation probe of Tab. S11 — the top 10 % by Eq. 5 plus the tokens
      ranked in the ``band`` (default 40–50 %) quantile, ignoring ``ratio``.

    ``candidates`` (bool, length ``length``) restricts the choice to those positions — the
    ones with a training target under ``--select-from targets``. The budget k is still
    ``ceil(ratio * length)`` over all real tokens (the same memory as without it), capped at
    the number of candidates. ``None`` ranks every position (``--select-from all``).
    ``fill`` (``--select-from targets-first``): a budget larger than the candidates keeps all of
    them and spends the rest on the other positions, chosen by the same strategy (at random, or
    the highest scores); ``probe`` ignores it. ``alpha``/``beta`` left None take the default
    for the ``--select-from`` these two stand for (:data:`DEFAULT_WEIGHTS`).
    """
    alpha, beta = score_weights(select_from_of(candidates, fill), alpha, beta)
    check_selection(strategy, ratio, alpha, beta)
    keep = np.zeros(length, dtype=bool)
    if strategy == "full":
        keep[:] = True
        return keep
    rng = np.random.default_rng([seed, index])
    budget = keep_count(length, ratio)
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=bool)
        if len(candidates) != length:
            raise TokenSeekError(f"example {index}: {len(candidates)} candidate flags for {length} tokens")
        pool = np.flatnonzero(candidates)
        k = min(budget, len(pool))
    else:
        pool = None
        k = budget
    if fill and pool is not None and strategy != "probe" and budget > len(pool):
        ranking = lambda: _ranking_score(strategy, context, gradient, alpha, beta, length, index)  # noqa: E731
        return _candidates_then_rest(candidates, budget, strategy, rng, ranking)
    if strategy != "probe" and k >= (length if pool is None else len(pool)):
        # The budget covers every candidate: nothing to rank, so no scores are needed either.
        keep[slice(None) if pool is None else pool] = True
        return keep
    if strategy == "random":
        keep[rng.choice(length, size=k, replace=False) if pool is None else rng.choice(pool, size=k, replace=False)] = True
        return keep
    if strategy == "first":
        keep[(np.arange(length) if pool is None else pool)[:k]] = True
        return keep
    score = _ranking_score(strategy, context, gradient, alpha, beta, length, index)
    if pool is not None:  # positions outside the pool rank last and are never taken
        score = np.where(candidates, score, -np.inf)
    if strategy == "mixed":
        return _best_then_random(score, k, explore, rng, candidates)
    if strategy == "probe":
        return _best_and_band(score, length if pool is None else len(pool), keep_count(length, 0.1), band)
    keep[_top(score, k)] = True
    return keep


def _best_then_random(score: np.ndarray, k: int, explore: float, rng, candidates: np.ndarray | None) -> np.ndarray:
    """``mixed``: the top (1 - explore)·k by score, then explore·k drawn at random from the other
    candidates (every position when ``candidates`` is None)."""
    keep = np.zeros(len(score), dtype=bool)
    keep[_top(score, k - int(round(explore * k)))] = True
    rest = np.flatnonzero(~keep if candidates is None else ~keep & candidates)
    keep[rng.choice(rest, size=k - int(keep.sum()), replace=False)] = True
    return keep


def _best_and_band(score: np.ndarray, n: int, top: int, band: tuple[float, float]) -> np.ndarray:
    """``probe`` (Tab. S11): the ``top`` best of the ``n`` rankable positions plus those ranked in
    the ``band`` quantile (positions outside the candidates score -inf and rank last)."""
    keep = np.zeros(len(score), dtype=bool)
    order = np.argsort(-score, kind="stable")[:n]
    keep[order[: min(n, top)]] = True
    lo, hi = (int(math.floor(q * n)) for q in band)
    keep[order[lo:hi]] = True
    return keep


def _candidates_then_rest(candidates: np.ndarray, budget: int, strategy: str, rng, ranking) -> np.ndarray:
    """Every candidate, and the rest of the budget from the other positions: drawn at random,
    the earliest (``first``), or the highest of ``ranking()`` (called only when there is a choice)."""
    keep = candidates.copy()
    rest = np.flatnonzero(~candidates)
    extra = budget - int(candidates.sum())
    if extra >= len(rest):
        keep[rest] = True
    elif strategy == "random":
        keep[rng.choice(rest, size=extra, replace=False)] = True
    elif strategy == "first":
        keep[rest[:extra]] = True
    else:
        keep[_top(np.where(candidates, -np.inf, ranking()), extra)] = True
    return keep


def _ranking_score(strategy: str, context, gradient, alpha: float, beta: float, length: int, index: int) -> np.ndarray:
    """The score a scored strategy ranks one example's positions by (Eq. 5 with its weights)."""
    if context is None or gradient is None:
        raise TokenSeekError(f"--selection {strategy} needs token scores: run `tokenseek score` and pass --scores")
    if len(context) != length or len(gradient) != length:
        raise TokenSeekError(f"example {index}: scores cover {len(context)} tokens but the example has {length}; re-score this data")
    if strategy == "context-residual":
        context = position_residual(context)
    return combined_score(context, gradient, *SCORE_WEIGHTS.get(strategy, (alpha, beta)))


def position_residual(context) -> np.ndarray:
    """The context score relative to what a token at its position gets (as a ratio, > 0).

    Under the causal mask the token at position i of n is attended only by the n - i queries from
    i on, so the summed attention it receives falls with position whatever the token says, and
    ranking by it keeps the start of each answer (docs/VISUALIZE.md). Per example, log(context)
    is fitted by least squares as a + b·log(n - i) over all its tokens, and the ratio of each
    token's score to the fit is returned: the positional trend is gone, the rest is kept.
    """
    log_context = np.log(np.maximum(np.asarray(context, dtype=np.float64), 1e-12))
    n = len(log_context)
    if n < 3:  # no trend to fit
        return np.exp(log_context)
    queries = np.log(np.arange(n, 0, -1, dtype=np.float64))
    slope, intercept = np.polyfit(queries, log_context, 1)
    return np.exp(log_context - (intercept + slope * queries))


def answer_positions(keep: np.ndarray, has_target: np.ndarray) -> np.ndarray:
    """Where in its answer each kept target sits: the i-th of T targets at i / (T - 1), so 0 is
    the position that predicts the answer's first token and 1 its last (a lone target: 0.5).
    Keeping every target, or a uniform choice, averages 0.5."""
    kept = np.flatnonzero(np.asarray(keep, dtype=bool)[has_target])
    total = int(np.count_nonzero(has_target))
    return kept / (total - 1) if total > 1 else np.full(len(kept), 0.5)


class SelectionTally:
    """What a selection trains on: kept positions, kept *targets*, and examples left without one.

    The loss exists only at kept positions whose next token is a target, so a selection
    that keeps mostly prompt tokens trains on little — this makes that visible.
    """

    def __init__(self) -> None:
        self.examples = self.kept = self.tokens = self.kept_targets = self.targets = self.without_target = 0
        self.answer_position_sum = 0.0  # of the kept targets; see summary()

    def add(self, keep, labels) -> None:
        """One example: its bool keep mask and labels over its real tokens (numpy or lists)."""
        keep = np.asarray(keep, dtype=bool)
        has_target = target_positions(labels)
        kept_targets = int((keep & has_target).sum())
        self.examples += 1
        self.kept += int(keep.sum())
        self.tokens += len(keep)
        self.kept_targets += kept_targets
        self.targets += int(has_target.sum())
        self.without_target += kept_targets == 0
        self.answer_position_sum += float(answer_positions(keep, has_target).sum())

    def summary(self) -> dict:
        return {
            "tokens_kept": self.kept,
            "tokens_total": self.tokens,
            "kept_fraction": self.kept / max(self.tokens, 1),
            "kept_targets": self.kept_targets,
            "target_positions": self.targets,
            "kept_target_share": self.kept_targets / max(self.targets, 1),
            # 0 = the first target of each answer, 1 = the last; keeping all (or a uniform
            # choice) gives 0.5, a selection that favours answer starts less.
            "kept_target_answer_position": self.answer_position_sum / self.kept_targets if self.kept_targets else None,
            "examples_without_kept_target": self.without_target,
            "examples": self.examples,
        }

    def warning(self, threshold: float = 0.05) -> str | None:
        """A message naming the fix when more than ``threshold`` of the examples train on nothing."""
        if self.examples and self.without_target > threshold * self.examples:
            return (
                f"{self.without_target} of {self.examples} examples ({100 * self.without_target / self.examples:.0f} %) "
                "have no kept token with a training target, so they contribute no gradient: use --select-from targets "
                "(or raise --ratio / lower --alpha relative to --beta)"
            )
        return None


class KeptSetDrift:
    """How much each example's kept set moves between its first and its last visit (online seeking:
    the model changes between visits, so its scores do too). Jaccard 1 = the same tokens."""

    def __init__(self) -> None:
        self.first: dict[int, frozenset] = {}
        self.last: dict[int, frozenset] = {}
        self.visits: dict[int, int] = {}

    def add(self, index: int, keep) -> None:
        kept = frozenset(np.flatnonzero(np.asarray(keep, dtype=bool)).tolist())
        self.first.setdefault(index, kept)
        self.last[index] = kept
        self.visits[index] = self.visits.get(index, 0) + 1

    def summary(self) -> dict:
        pairs = [(self.first[i], self.last[i]) for i, n in self.visits.items() if n > 1]
        scores = [len(a & b) / max(len(a | b), 1) for a, b in pairs]
        return {"examples_revisited": len(scores), "mean_jaccard_first_last": float(np.mean(scores)) if scores else None}


def keep_for_labels(
    labels,
    ratio: float,
    strategy: str,
    *,
    select_from: str = DEFAULT_SELECT_FROM,
    stored: dict | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    seed: int = 0,
    index: int = 0,
) -> np.ndarray:
    """One example's keep mask from its labels (and its stored scores, for scored strategies).

    ``select_from``: see :data:`SELECT_FROM` and :func:`candidate_positions`.
    """
    stored = stored or {}
    return select_keep(
        len(labels),
        ratio,
        strategy,
        context=stored.get("context"),
        gradient=stored.get("gradient"),
        alpha=alpha,
        beta=beta,
        seed=seed,
        index=index,
        **candidate_positions(labels, select_from),
    )
