"""Held-out loss by part of the answer: where each selection's held-out gain comes from.

For the named trained cells of a study (their adapters in the study's runs_dir) and the base
model, every response token of the study's held-out records is put in the fifth of its answer
it falls in (the i-th of T answer tokens at i / (T - 1), as ``tokenseek visualize --summary``
places kept targets) and the token-weighted mean loss of each fifth is written out. The total
over all fifths is the cell's held-out loss (checked against its result file). Run from the
repository root, one thread::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 experiments/answer_position_loss.py \\
        experiments/alpha_beta_targets.yaml --base --cells full-s0 targets-random10-s0 \\
        targets-tokenseek10-a1b0-s0 targets-first10-s0 \\
        --output experiments/results/answer_position/alpha_beta_targets-s0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tokenseek.data import load_records, tokenize_records
from tokenseek.eval.model import load_for_eval
from tokenseek.experiment import load_study
from tokenseek.experiment.cells import read_json, result_path, train_dir
from tokenseek.experiment.config import effective
from tokenseek.experiment.data import sample_data
from tokenseek.seeking.select import answer_positions, target_positions
from tokenseek.utils.io import write_json

PARTS = 5


@torch.no_grad()
def loss_by_part(model, examples: list[dict]) -> dict:
    """Summed loss and token count per fifth of the answer, over ``examples`` (one at a time)."""
    sums, counts = np.zeros(PARTS), np.zeros(PARTS, dtype=int)
    model.eval()
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        has_target = target_positions(ex["labels"])
        where = np.flatnonzero(has_target)  # position p predicts labels[p + 1]
        logits = model(input_ids=ids).logits[0, torch.from_numpy(where)].float()
        losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ex["labels"])[where + 1], reduction="none").numpy()
        part = np.minimum((answer_positions(has_target, has_target) * PARTS).astype(int), PARTS - 1)
        np.add.at(sums, part, losses)
        np.add.at(counts, part, 1)
    return {"loss_sum": sums.tolist(), "tokens": counts.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a study config, e.g. experiments/alpha_beta_targets.yaml")
    parser.add_argument("--cells", nargs="+", default=[], help="trained cells of the study")
    parser.add_argument("--base", action="store_true", help="also the base model (no fine-tuning)")
    parser.add_argument("--output", required=True, help="the JSON file to write")
    args = parser.parse_args()

    torch.set_num_threads(1)
    study = load_study(args.config)
    cells = [study.cell(name) for name in args.cells]  # unknown names fail before any work
    missing = [c.name for c in cells if not train_dir(study, c).is_dir()]
    if missing:  # run folders stay on the machine that trained them; result files travel
        raise SystemExit(f"answer_position_loss.py: no trained run on this machine for {', '.join(missing)} (under {study.runs_dir}): pick cells trained here")
    params = effective(cells[0].params if cells else {})
    records = load_records(sample_data(study)["heldout_file"], limit=study.eval["heldout_limit"])
    rows, examples = {}, None
    for name, cell in [("base", None)] * args.base + [(c.name, c) for c in cells]:
        started = time.time()
        model, tokenizer, _ = load_for_eval(params["model"] if cell is None else str(train_dir(study, cell)))
        if examples is None:  # every model here shares the base model's tokenizer
            examples = tokenize_records(records, tokenizer, template=params["template"], max_length=params["max_length"]).examples
        row = loss_by_part(model, examples)
        row["loss"] = sum(row["loss_sum"]) / sum(row["tokens"])
        if cell is not None:  # the same tokens and model as the study's held-out loss
            row["study_heldout_loss"] = read_json(result_path(study, cell))["heldout"]["loss"]
        row["seconds"] = round(time.time() - started, 1)
        rows[name] = row
        print(name, " ".join(f"{s / max(n, 1):.4f}" for s, n in zip(row["loss_sum"], row["tokens"])), f"total {row['loss']:.4f}", flush=True)
    write_json(Path(args.output), {
        "study": study.study, "config": args.config, "records": len(records), "parts": PARTS,
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 experiments/answer_position_loss.py " + " ".join(
            [args.config] + ["--base"] * args.base + (["--cells", *args.cells] if args.cells else []) + ["--output", args.output]),
        "rows": rows,
    })
    print(json.dumps({name: round(r["loss"], 4) for name, r in rows.items()}))


if __name__ == "__main__":
    main()
