"""The fixed Python work of a ditched step that does not depend on the batch: walks over every
module of the model. On a GPU, where a small model's step is bound by launch overhead, it shows
(docs/BENCHMARKS.md "On a GPU"). Each walk is timed beside the plain code it replaced. Default
model (SmolLM2-135M-Instruct) with LoRA r 8 on all linear layers, one torch thread, 7 rounds of 20
calls each.

    PYTHONPATH=. python3 experiments/step_overhead.py
"""

import statistics
import time

import torch

from tokenseek.ditching.attention import check_supports_ditching
from tokenseek.models import apply_peft, load_model
from tokenseek.models.introspect import attention_configs, decoder_layers, eval_mode

CALLS = 20
ROUNDS = 7


def eval_and_back(model) -> None:
    with eval_mode(model):
        pass


def plain_eval_and_back(model) -> None:
    """What eval_mode did before it wrote the flags directly: torch's own switch, both ways."""
    model.eval()
    model.train()


def configs_by_getattr(model) -> list:
    """What attention_configs did before it read each module's instance dict."""
    return [m.config for m in model.modules() if getattr(m, "config", None) is not None and hasattr(m.config, "_attn_implementation")]


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_model(None)
    model = apply_peft(model, "lora", r=8, alpha=16, dropout=0.05)
    print(f"{sum(1 for _ in model.modules())} modules")
    walks = (
        ("attention_configs (once per kept pass; before 67d7106 also per checkpointed layer, twice)", attention_configs),
        ("  the same walk with getattr (before)", configs_by_getattr),
        ("eval_mode around the context pass", eval_and_back),
        ("  model.eval() and model.train() (before)", plain_eval_and_back),
        ("check_supports_ditching", check_supports_ditching),
        ("decoder_layers", decoder_layers),
    )
    # Rounds interleave the walks, so load from other processes falls on all of them alike;
    # the median round is reported.
    rounds: dict[str, list[float]] = {name: [] for name, _ in walks}
    for _ in range(ROUNDS):
        for name, fn in walks:
            start = time.perf_counter()
            for _ in range(CALLS):
                fn(model)
            rounds[name].append((time.perf_counter() - start) / CALLS * 1e3)
    for name, times in rounds.items():
        print(f"{name}: {statistics.median(times):.2f} ms (rounds {min(times):.2f}–{max(times):.2f})")

if __name__ == "__main__":
    main()
