"""The fixed Python work of a ditched step that does not depend on the batch: walks over every
module of the model. On a GPU, where a small model's step is bound by launch overhead, it shows
(docs/BENCHMARKS.md "On a GPU"). Default model (SmolLM2-135M-Instruct) with LoRA r 8 on all
linear layers, one torch thread, mean of 20 calls each.

    PYTHONPATH=. python3 experiments/step_overhead.py
"""

import time

import torch

from tokenseek.ditching.attention import check_supports_ditching
from tokenseek.models import apply_peft, load_model
from tokenseek.models.introspect import attention_configs, decoder_layers, eval_mode

CALLS = 20


def eval_and_back(model) -> None:
    with eval_mode(model):
        pass


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_model(None)
    model = apply_peft(model, "lora", r=8, alpha=16, dropout=0.05)
    print(f"{sum(1 for _ in model.modules())} modules")
    for name, fn in (
        ("attention_configs (once per kept pass; before 67d7106 also per checkpointed layer, twice)", attention_configs),
        ("eval_mode around the context pass", eval_and_back),
        ("check_supports_ditching", check_supports_ditching),
        ("decoder_layers", decoder_layers),
    ):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn(model)
        print(f"{name}: {(time.perf_counter() - start) / CALLS * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
