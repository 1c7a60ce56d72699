"""What the gradient score costs in the offline scoring pass, side by side in one process.

`train` skips the gradient score (the partial backward) when its selection's weights do not
read it, as the default α,β = 1,0 among targets does. This times one scoring batch both ways,
alternating, on the default model (SmolLM2-135M-Instruct), 4 examples of 256 tokens, the second
half of each labelled (an answer), one torch thread; the first round is a warm-up. Then the
peak live tensor bytes above the weights of one batch each way (profiler replay, as
`tokenseek bench` measures a step).

    PYTHONPATH=. python3 experiments/scoring_cost.py
"""

import time

import torch

from tokenseek.bench.memory import measure_step_memory
from tokenseek.models import load_model
from tokenseek.seeking.seek import score_batch

ROUNDS = 6


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_model(None)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :128] = -100
    mask = torch.ones_like(ids)
    times = {True: [], False: []}
    for _ in range(ROUNDS):
        for with_gradient in times:
            start = time.perf_counter()
            score_batch(model, ids, labels, mask, with_gradient=with_gradient)
            times[with_gradient].append(time.perf_counter() - start)
    for with_gradient, seconds in times.items():
        kept = sorted(seconds[1:])
        print(f"with_gradient={with_gradient}: median {kept[len(kept) // 2]:.2f} s, min {kept[0]:.2f}, max {kept[-1]:.2f} per batch")
    for with_gradient in times:
        with measure_step_memory(torch.device("cpu")) as holder:
            score_batch(model, ids, labels, mask, with_gradient=with_gradient)
        memory = holder["memory"]
        above = (memory.peak_bytes - memory.baseline_bytes) / 2**20
        print(f"with_gradient={with_gradient}: peak {above:.1f} MiB above the {memory.baseline_bytes / 2**20:.0f} MiB live before")


if __name__ == "__main__":
    main()
