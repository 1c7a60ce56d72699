"""Measure one benchmark configuration in a fresh process.

Usage: ``python -m tokenseek.bench.worker SPEC.json RESULT.json``.

A fresh process per configuration matters: peak RSS never goes down within a
process, allocator caches carry over, and an out-of-memory configuration must not
take the whole benchmark with it.

The spec (a JSON object, see :func:`default_spec`) names the model, PEFT method,
sequence length, batch size, mode (``train`` or ``score``) and ratio. The input is
synthetic: ``seq_len`` random token ids per example with labels on every token, so
every configuration trains on exactly ``seq_len`` tokens.

Order of work (train mode):
  1. warm-up steps — AdamW creates its state here, kernels and allocator warm up;
  2. on CPU, one step for peak RSS (the orchestrator starts workers with malloc set to
     return freed memory at once), then malloc back to normal and one more warm-up step:
     that malloc mode slows allocation, so it is never on while timing;
  3. ``steps`` timed steps without any instrumentation (median/min/max time);
  4. one profiled step with saved-tensor hooks: peak/average live tensor bytes and
     activation bytes (profiling slows a step down, so it is never timed).
A step is forward + backward + ``AdamW.step()`` + ``zero_grad(set_to_none=True)``,
so every step starts from the same live memory (parameters, optimizer state, input).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Callable

import torch

from tokenseek.bench import memory
from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK
from tokenseek.models import introspect
from tokenseek.models.placement import default_device
from tokenseek.errors import TokenSeekError

MODES = ("train", "score")


def default_spec() -> dict:
    return {
        "model": None,  # resolved path or Hub id (the orchestrator resolves GGUF files first)
        "peft": "lora",
        "lora": {},  # apply_peft keyword arguments (tokenseek.models.adapters.adapter_kwargs)
        "seq_len": 1024,
        "batch_size": 1,
        "mode": "train",
        "ratio": 1.0,
        "steps": 3,
        "warmup": 1,
        "seed": 0,
        "score_ratio": 0.1,
        "score_gradient": False,  # the scoring stage also runs the partial backward for the gradient score
        "threads": None,  # intra-op threads; None = torch's default (one per core)
        "checkpointing": False,  # gradient checkpointing (non-reentrant), as TrainingArguments turns it on
        "loss_chunk": DEFAULT_LOSS_CHUNK,  # LM head + loss on this many positions at a time; 0 = all at once
        "context_chunk": None,  # tokens per call of the context pass; None = the device's default, 0 = all at once
        "online": False,  # select inside the step with the current weights (online seeking)
        "beta": 1.0,  # online seeking's gradient-score weight (0: the gradient score is not computed)
        "dtype": "fp32",  # weights and compute: fp32, bf16 or fp16 (PEFT adapters stay fp32)
        "target_share": 1.0,  # share of each example's positions with a label (the rest: a masked prompt)
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PassTimer:
    """Wall time of each decoder call: for ditching, call 1 is the no-grad context pass."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.device, self.calls, self._t0 = device, [], 0.0
        decoder = introspect.decoder(model)
        self._handles = [
            decoder.register_forward_pre_hook(self._start),
            decoder.register_forward_hook(self._stop),
        ]

    def _start(self, *_):
        _sync(self.device)
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        _sync(self.device)
        self.calls.append(time.perf_counter() - self._t0)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def synthetic_batch(
    vocab_size: int, seq_len: int, batch_size: int, ratio: float, seed: int, device, target_share: float = 1.0
) -> dict:
    """Random tokens; labels on the last ``target_share`` of each example (the rest is a masked
    prompt, as in instruction data), a random keep mask per example drawn among the positions
    that carry a target, as training's default ``--select-from targets`` does (with labels on
    every token: among all positions, as the tables before ``target_share`` existed).

    The keep mask is built exactly like training builds it (``select_keep``); scored
    selections keep the same number of tokens, so they cost the same in training. At ratio 1
    every position is kept, whatever ``target_share``: full-token training back-propagates
    through the prompt too.
    """
    from tokenseek.constants import IGNORE_INDEX
    from tokenseek.ditching.loss import kept_targets
    from tokenseek.seeking.select import select_keep, target_positions

    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    labels = input_ids.clone()
    labels[:, : seq_len - max(1, round(target_share * seq_len))] = IGNORE_INDEX
    candidates = target_positions(labels[0].numpy()) if target_share < 1 else None
    if ratio >= 1:  # the full-token reference: every position, prompt included, one ordinary pass
        candidates = None
    keep = torch.stack(
        [
            torch.from_numpy(select_keep(seq_len, ratio, "random", seed=seed, index=i, candidates=candidates))
            for i in range(batch_size)
        ]
    )
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "keep": keep,
        "shift_labels": kept_targets(labels, keep),
    }
    return {k: v.to(device) for k, v in batch.items()}


def training_loss(model, batch: dict, spec: dict | None = None) -> torch.Tensor:
    """The loss exactly as ``TokenSeekTrainer.compute_loss`` computes it (no accumulation)."""
    from tokenseek.ditching.loss import kept_targets, step_loss_sums
    from tokenseek.seeking.online import OnlineSeeker

    spec = {**default_spec(), **(spec or {})}
    keep, cache, shift_labels = batch["keep"], None, batch["shift_labels"]
    if spec["online"] and spec["ratio"] < 1:
        keep, cache, _ = OnlineSeeker(ratio=spec["ratio"], beta=spec["beta"])(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
        shift_labels = kept_targets(batch["labels"], keep)
    sums = step_loss_sums(
        model, batch["input_ids"], batch["attention_mask"], shift_labels, keep, cache=cache, loss_chunk=spec["loss_chunk"],
        context_chunk=spec["context_chunk"],
    )
    return sums.token_mean()


def _load(spec: dict, device: torch.device):
    from tokenseek.models import apply_peft, load_model

    from tokenseek.models.placement import resolve_dtype, storage_dtype

    compute = resolve_dtype(spec["dtype"], device)
    stored = storage_dtype(compute, spec["peft"] if spec["mode"] == "train" else "lora")  # scoring trains nothing
    model, _ = load_model(spec["model"], quantize="nf4" if spec["peft"] == "qlora" else None, dtype=stored, device=device)
    # safetensors weights are memory-mapped: copy them into ordinary memory so RSS
    # counts them from the start instead of faulting them in during a measured step.
    # (Parameters are deduplicated by model.parameters(), so tied weights stay tied.)
    with torch.no_grad():
        for p in model.parameters():
            if type(p) is torch.nn.Parameter and p.device.type == "cpu":
                p.data = p.data.clone()
    if spec["mode"] == "train":
        # adapter_kwargs' settings; full-parameter rows take none of them
        lora = {} if spec["peft"] == "none" else spec.get("lora") or {}
        model = apply_peft(model, spec["peft"], **lora)
        if spec["checkpointing"]:
            introspect.enable_checkpointing(model, use_reentrant=False)
        model.train()
    return model


def _param_summary(model, optimizer) -> dict:
    params = list(model.parameters())
    # Only a training step has an optimizer; scoring's partial backward keeps no gradients.
    trainable = [p for p in params if p.requires_grad] if optimizer is not None else []
    opt_tensors = []
    if optimizer is not None:
        for state in optimizer.state.values():
            opt_tensors += [v for v in state.values() if torch.is_tensor(v)]
    return {
        "param_bytes": memory.unique_storage_bytes(params + list(model.buffers())),
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in trainable),
        "grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_bytes": memory.unique_storage_bytes(opt_tensors),
    }


def _step_fn(spec: dict, model, batch: dict, optimizer) -> Callable[[dict], None]:
    """One step; ``phases`` receives the wall time of each part."""
    device = batch["input_ids"].device
    if spec["mode"] == "score":
        from tokenseek.seeking import seek

        # Context + gradient is what the paper's weights over all positions need; context
        # alone is what `tokenseek train` scores with its default selection among targets.
        weights = {"select_from": "all", "alpha": 1.0, "beta": 1.0} if spec["score_gradient"] else {"select_from": "targets"}

        def score(phases: dict) -> None:
            t0 = time.perf_counter()
            seek(
                model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"], ratio=spec["score_ratio"],
                with_gradient=spec["score_gradient"], **weights,
            )
            model.zero_grad(set_to_none=True)  # the partial backward leaves head/last-block grads
            _sync(device)
            phases["score"] = time.perf_counter() - t0

        return score

    from tokenseek.models.placement import resolve_dtype

    compute = resolve_dtype(spec["dtype"], device)

    def train(phases: dict) -> None:
        t0 = time.perf_counter()
        with torch.profiler.record_function(memory.FORWARD_BACKWARD_RANGE):  # no-ops unless profiled
            # The Trainer's bf16/fp16 autocast, as `tokenseek train --dtype` runs.
            with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
                loss = training_loss(model, batch, spec)
            _sync(device)
            t1 = time.perf_counter()
            with torch.profiler.record_function(memory.BACKWARD_RANGE):
                loss.backward()
            _sync(device)
        t2 = time.perf_counter()
        with torch.profiler.record_function(memory.OPTIMIZER_RANGE):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        phases.update(forward=t1 - t0, backward=t2 - t1, optimizer=t3 - t2, loss=float(loss.detach()))

    return train


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def run(spec: dict) -> dict:
    """Measure one configuration: warm-up, peak RSS (CPU), step times, then one step's memory."""
    spec = {**default_spec(), **spec}
    if spec["mode"] not in MODES:
        raise TokenSeekError(f"unknown worker mode {spec['mode']!r}")
    device = default_device()
    if spec["threads"]:
        # On a shared machine, 2 OpenMP threads fighting other processes for 2 cores stall
        # at every barrier (10x slower, erratic); 1 thread degrades gracefully.
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    # Other processes on the machine skew timings (never memory): record the load around the run.
    result = {"spec": spec, "environment": environment(device), "loadavg": {"start": os.getloadavg()[0]}}
    model, batch, optimizer = _setup(spec, device)
    result["tokens"] = {"total": int(batch["keep"].numel()), "kept": int(batch["keep"].sum())}
    step = _step_fn(spec, model, batch, optimizer)
    for _ in range(spec["warmup"]):
        step({})
    result["params"] = _param_summary(model, optimizer)
    if device.type == "cpu" and spec["steps"] > 0:
        result["rss"] = _measure_rss(step)
    if spec["steps"]:
        result["time"] = _measure_time(spec["steps"], model, device, step)
    result["memory"], result["activations"] = _measure_memory(model, device, step)
    result["loadavg"]["end"] = os.getloadavg()[0]
    return result


def _setup(spec: dict, device: torch.device):
    """The model (with its adapter), a synthetic batch with its keep mask, and AdamW when training."""
    model = _load(spec, device)
    vocab = introspect.unwrap(model).get_input_embeddings().weight.shape[0]
    ratio = 1.0 if spec["mode"] == "score" else spec["ratio"]
    batch = synthetic_batch(vocab, spec["seq_len"], spec["batch_size"], ratio, spec["seed"], device, spec["target_share"])
    optimizer = None
    if spec["mode"] == "train":
        trainable = [p for p in model.parameters() if p.requires_grad]
        # adamw_torch, as the trainer uses; a tiny lr keeps random-data steps finite.
        optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.01)
    return model, batch, optimizer


def _measure_rss(step: Callable[[dict], None]) -> dict:
    # Peak RSS first, while malloc still returns freed memory at once (RSS_ENV) ...
    start = memory.reset_peak_rss()
    step({})
    rss = {"peak_bytes": memory.peak_rss_bytes(), "start_bytes": start}
    # ... then ordinary malloc for timing, after one step that regrows the heap.
    memory.fast_malloc()
    step({})
    return rss


def _measure_time(steps: int, model, device: torch.device, step: Callable[[dict], None]) -> dict:
    """Wall and CPU seconds per step, and the median of each phase (forward, backward, ...)."""
    timer = PassTimer(model, device)
    times, cpu_times, phases_all = [], [], []
    for _ in range(steps):
        timer.calls.clear()
        phases: dict = {}
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step(phases)
        times.append(time.perf_counter() - t0)
        # CPU seconds of this process (all threads): less sensitive than wall time to
        # other processes competing for the same cores.
        cpu_times.append(time.process_time() - c0)
        phases["decoder_calls"] = list(timer.calls)
        phases_all.append(phases)
    timer.remove()
    return {"step_s": _summary(times), "cpu_s": _summary(cpu_times), "phases": _phase_medians(phases_all)}


def _measure_memory(model, device: torch.device, step: Callable[[dict], None]) -> tuple[dict, dict]:
    """One step's live-tensor memory (peak, average, per phase) and what autograd saved for backward."""
    with memory.measure_step_memory(device) as measured, memory.count_saved_tensors(model) as saved:
        step({})
    m = measured["memory"]
    live = {
        "peak_bytes": m.peak_bytes,
        "average_bytes": m.average_bytes,
        "baseline_bytes": m.baseline_bytes,
        "end_bytes": m.end_bytes,
        "events": m.events,
        # The planner models these two apart: forward/backward grows with the ratio, the
        # optimizer update (parameters + gradients + AdamW state + temporaries) does not.
        "forward_backward_peak_bytes": m.window_peaks.get(memory.FORWARD_BACKWARD_RANGE),
        "optimizer_peak_bytes": m.window_peaks.get(memory.OPTIMIZER_RANGE),
        # Peak live bytes inside each phase that ran (context pass, kept pass, backward).
        "phase_peak_bytes": {name: m.window_peaks[name] for name in memory.PHASES if name in m.window_peaks},
        "method": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "profiler peak live tensor bytes",
    }
    activations = {
        "saved_bytes": saved.activation_bytes,
        "saved_parameter_bytes": saved.parameter_bytes,
        "storages": len(saved.activation),
        "largest": saved.largest(),
    }
    return live, activations


def _phase_medians(phases_all: list[dict]) -> dict:
    out = {}
    for key in ("forward", "backward", "optimizer", "score"):
        values = [p[key] for p in phases_all if key in p]
        if values:
            out[key] = statistics.median(values)
    calls = [p["decoder_calls"] for p in phases_all if p.get("decoder_calls")]
    if calls and all(len(c) == len(calls[0]) for c in calls):
        # Ditching: [context pass (no grad), kept-token pass]; full-token: [forward].
        out["decoder_calls"] = [statistics.median(c[i] for c in calls) for i in range(len(calls[0]))]
    losses = [p["loss"] for p in phases_all if "loss" in p]
    if losses:
        out["loss"] = losses[-1]
    return out


def environment(device: torch.device) -> dict:
    import transformers

    env = {
        "device": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
    }
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m tokenseek.bench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    with open(argv[0]) as f:
        spec = json.load(f)
    code = 0
    try:
        result = run(spec)
    except TokenSeekError as exc:
        result, code = {"spec": spec, "error": str(exc), "user_error": True}, 2
    except MemoryError:
        result, code = {"spec": spec, "error": "out of memory"}, 3
    except Exception as exc:  # recorded, so one broken configuration does not end the benchmark
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        result, code = {"spec": spec, "error": f"{type(exc).__name__}: {first}"}, 1
    with open(argv[1], "w") as f:
        json.dump(result, f, indent=2)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
