"""Where each 10 % selection among the targets puts its kept tokens inside the answer, from a
study's stored scores (no model run, no training). The context score sums the attention a
token receives over the queries; under the causal mask the token at position i of n is seen by
only the n - i queries from i on, so the sum favours early tokens. "context per query" divides
by n - i (the mean attention from the queries that can see the token) to ask whether that
removes the tilt (it overshoots: see docs/VISUALIZE.md); "context, position fitted out" is
`--selection context-residual`, which fits the trend per example instead. Random and first are the
two reference points.

    PYTHONPATH=. python3 experiments/context_mean_positions.py \
        --data ../tokenseek-runs/experiments/data/778d642a4f/train.json --max-length 384 \
        --scores ../tokenseek-runs/experiments/scores/L1-abs-fp32-len384-97955b37d1

(Study A's sampled training records and its score store; Study B's are data/708ac7d906 with
--max-length 256 and scores/L1-abs-fp32-len256-dd36a5787d.) Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tokenseek.data import records_from, tokenize_with
from tokenseek.models import load_tokenizer
from tokenseek.seeking.select import SelectionTally, answer_positions, keep_for_labels, ranking_needed, target_positions
from tokenseek.seeking.store import ScoreStore
from tokenseek.visualize.config import VisualizeConfig

# name -> (selection, transform of the stored context score)
SELECTIONS = {
    "random": ("random", None),
    "first": ("first", None),
    "context": ("context", None),
    "context per query": ("context", lambda context: np.asarray(context, np.float64) / np.arange(len(context), 0, -1)),
    "context, position fitted out": ("context-residual", None),  # tokenseek.seeking.select.position_residual
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--scores", required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--ratio", type=float, default=0.1)
    args = parser.parse_args()

    cfg = VisualizeConfig(data=args.data, max_length=args.max_length, template=args.template, scores=args.scores, summary=True, output="-")
    data = tokenize_with(records_from(cfg), load_tokenizer(None), cfg)
    store = ScoreStore.open(args.scores)
    tallies = {name: SelectionTally() for name in SELECTIONS}
    first_fifth = {name: [] for name in SELECTIONS}
    choosing = 0
    for ex in data.examples:
        labels = np.asarray(ex["labels"])
        if not ranking_needed(labels, args.ratio, "targets"):
            continue  # the budget covers every target: every selection keeps the same tokens
        choosing += 1
        has_target = target_positions(labels)
        row = store.get(ex["index"])
        for name, (selection, transform) in SELECTIONS.items():
            stored = {**row, "context": transform(row["context"])} if transform else row
            keep = keep_for_labels(labels, args.ratio, selection, select_from="targets", stored=stored, index=ex["index"])
            tallies[name].add(keep, labels)
            first_fifth[name].append(float(np.mean(answer_positions(keep, has_target) < 0.2)))
    print(json.dumps({
        "data": args.data,
        "scores": args.scores,
        "ratio": args.ratio,
        "examples": len(data.examples),
        "examples_with_a_choice": choosing,
        "kept_target_answer_position": {s: round(t.summary()["kept_target_answer_position"], 4) for s, t in tallies.items()},
        "share_kept_in_first_fifth_of_answer": {s: round(float(np.mean(v)), 4) for s, v in first_fifth.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
