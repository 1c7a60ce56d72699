"""Time ``tokenseek-prefix`` against lm-eval's plain ``HFLM`` in one process, same model, same requests.

Each task runs through ``evaluate_tasks`` (the code path of ``tokenseek eval``) once per
lm-eval model, the order alternating between tasks so that neither model always runs
on a warmer process. The per-request log-likelihoods and is_greedy flags of the two runs
are compared from lm-eval's samples. Run from the repository root::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 experiments/bench_prefix_lm.py --limit 20 \\
        --output experiments/results/prefix_lm/limit20.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tokenseek.eval.harness import LM_EVAL_MODELS, evaluate_tasks, select_tasks
from tokenseek.models import load_model


def compare_samples(a: dict, b: dict) -> dict:
    """Max |log-likelihood difference| and is_greedy mismatches over all requests of two runs."""
    max_diff, mismatches, requests = 0.0, 0, 0
    for task, samples in a.items():
        theirs = {s["doc_id"]: s for s in b[task]}
        for sample in samples:
            other = theirs[sample["doc_id"]]
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip(_pairs(sample), _pairs(other), strict=True):
                max_diff = max(max_diff, abs(ll_a - ll_b))
                mismatches += greedy_a != greedy_b
                requests += 1
    return {"requests": requests, "max_abs_loglik_diff": max_diff, "is_greedy_mismatches": mismatches}


def _pairs(sample: dict) -> list[tuple[float, bool]]:
    return [(float(ll), bool(greedy)) for resp in sample["resps"] for ll, greedy in resp]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="arc_challenge,hellaswag", help="comma-separated; each at its paper shots (ARC 25, HellaSwag 10)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", required=True)
    args = p.parse_args()

    torch.set_num_threads(1)
    model, tokenizer = load_model(None)
    model.eval()
    with torch.no_grad():  # first-call overheads (allocator, kernels) outside the timed runs
        model(torch.arange(256)[None])

    runs = []
    for k, task in enumerate(args.tasks.split(",")):
        order = LM_EVAL_MODELS if k % 2 else tuple(reversed(LM_EVAL_MODELS))
        by_model = {}
        for name in order:
            # A fresh selection per run: lm-eval's few-shot sampler keeps its random state.
            selection = select_tasks(task, data_dir=args.data_dir, limit=args.limit)
            cpu, wall = time.process_time(), time.perf_counter()
            out = evaluate_tasks(model, tokenizer, selection, batch_size=args.batch_size, lm_eval_model=name, log_samples=True)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rec = out["tasks"][task]
            by_model[name] = out["lm_eval_samples"]
            runs.append({"task": task, "lm_eval_model": name, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "items": rec["items"], "requests": rec["requests"], "shots": rec["shots"], "metric": rec["metric"], "value": rec["value"], "load_avg_1min_after": round(os.getloadavg()[0], 2)})
            print(json.dumps(runs[-1]), flush=True)
        same = compare_samples(by_model["hf"], by_model["tokenseek-prefix"])
        timing = {r["lm_eval_model"]: r for r in runs if r["task"] == task}
        summary = {
            "task": task,
            "speedup_wall": round(timing["hf"]["wall_s"] / timing["tokenseek-prefix"]["wall_s"], 2),
            "speedup_cpu": round(timing["hf"]["cpu_s"] / timing["tokenseek-prefix"]["cpu_s"], 2),
            **same,
        }
        runs.append(summary)
        print(json.dumps(summary), flush=True)

    result = {
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 experiments/bench_prefix_lm.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "runs": runs,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
