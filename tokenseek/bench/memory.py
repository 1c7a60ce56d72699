"""How one training step's memory is measured.

Three figures, because each answers a different question:

- **live tensor bytes** (peak and time-weighted average over the step): what the
  paper's "Max. Mem." / "Ave. Mem." measure on a GPU. On CUDA the peak is
  ``torch.cuda.max_memory_allocated``; on CPU there is no allocator counter, so we
  replay the profiler's ``[memory]`` events (one per allocation/free) on top of the
  bytes already live when the step starts. This is exact and identical run to run.
- **activation bytes saved for backward** (``saved_tensors_hooks``): the part token
  ditching is meant to shrink, de-duplicated by storage, parameters and buffers
  excluded. A lower bound of activation memory: gradients and temporaries are not in it.
- **process peak RSS** (CPU only): what the operating system sees, runtime included.
  Only meaningful while glibc returns freed memory at once (:data:`RSS_ENV`, set by the
  orchestrator) and with the peak reset through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch

STEP_RANGE = "tokenseek_bench_step"
# Marks the optimizer update inside a step: its peak (parameters + gradients + AdamW
# state + update temporaries) does not depend on the ratio, unlike forward/backward's.
OPTIMIZER_RANGE = "tokenseek_bench_optimizer"
FORWARD_BACKWARD_RANGE = "tokenseek_bench_forward_backward"
BACKWARD_RANGE = "tokenseek_bench_backward"
# Where inside forward/backward the peak falls: the ditched step's two passes mark themselves
# (tokenseek.ditching.forward) and the worker marks the backward.
PHASES = {"tokenseek::context_pass": "context pass", "tokenseek::kept_pass": "kept pass", BACKWARD_RANGE: "backward"}



def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    """(data pointer, bytes) of the storage behind ``t``; None for storage-less tensors."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    ptr = storage.data_ptr()
    return (ptr, storage.nbytes()) if ptr else None


def unique_storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied/viewed tensors counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        key = _storage_key(t)
        if key is not None:
            seen[key[0]] = max(seen.get(key[0], 0), key[1])
    return sum(seen.values())


def live_tensor_bytes(device: torch.device) -> int:
    """Bytes of every tensor storage on ``device`` that Python can reach right now.

    The profiler only sees allocations made while it runs; this is the level they
    start from (parameters, optimizer state, inputs).
    """
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    gc.collect()
    with warnings.catch_warnings():
        # isinstance() on some lazily-imported module objects emits deprecation warnings.
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == device.type]
    return unique_storage_bytes(tensors)


@dataclass
class StepMemory:
    baseline_bytes: int  # live before the step
    peak_bytes: int  # highest live level during the step
    average_bytes: float  # time-weighted mean live level over the step
    end_bytes: int  # baseline + net allocations: equals baseline in a steady-state step
    events: int  # memory events replayed
    window_peaks: dict = field(default_factory=dict)  # range name -> peak live bytes inside it


def replay_memory_events(
    events, baseline: int, start_ns: int, end_ns: int, device_type: str, windows: dict | None = None
) -> StepMemory:
    """Running sum of allocation deltas -> peak and time-weighted average live bytes.

    ``windows`` maps a name to (start_ns, end_ns); the result's ``window_peaks`` holds
    the highest live level inside each (the level on entry included).
    """
    mem = sorted(
        ((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and _device_name(e) == device_type),
        key=lambda x: x[0],
    )
    windows = windows or {}
    wpeak: dict[str, int] = {}
    live, peak, area = baseline, baseline, 0.0
    last_t = start_ns
    for t, delta in mem:
        t = min(max(t, start_ns), end_ns)
        for name, (ws, _end) in windows.items():
            if t >= ws and name not in wpeak:
                wpeak[name] = live  # level on entering the window
        area += live * (t - last_t)
        last_t = t
        live += delta
        peak = max(peak, live)
        for name, (ws, we) in windows.items():
            if ws <= t <= we:
                wpeak[name] = max(wpeak[name], live)
    area += live * (end_ns - last_t)
    for name in windows:
        wpeak.setdefault(name, live)
    duration = max(end_ns - start_ns, 1)
    return StepMemory(baseline, int(peak), area / duration, int(live), len(mem), {k: int(v) for k, v in wpeak.items()})


def _device_name(event) -> str:
    return str(event.device_type()).rsplit(".", 1)[-1].lower()


@contextlib.contextmanager
def measure_step_memory(device: torch.device) -> Iterator[dict]:
    """Profile the enclosed step; on exit the yielded dict holds ``"memory": StepMemory``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    holder: dict = {}
    baseline = live_tensor_bytes(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with profile(activities=activities, profile_memory=True) as prof:
        with record_function(STEP_RANGE):
            yield holder
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    events = prof.profiler.kineto_results.events()
    span = [e for e in events if e.name() == STEP_RANGE]
    start_ns, end_ns = (span[0].start_ns(), span[0].end_ns()) if span else (0, 0)
    windows = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name() in (OPTIMIZER_RANGE, FORWARD_BACKWARD_RANGE, *PHASES)}
    memory = replay_memory_events(events, baseline, start_ns, end_ns, device.type, windows)
    if device.type == "cuda":
        # The allocator's own counter is the authority for the peak on CUDA.
        memory.peak_bytes = int(torch.cuda.max_memory_allocated(device))
    holder["memory"] = memory


@dataclass
class SavedTensors:
    """Tensors autograd saved for backward, by storage (a storage saved twice counts once)."""

    activation: dict[int, tuple[int, tuple, str]] = field(default_factory=dict)  # ptr -> (bytes, shape, dtype)
    parameter_bytes: int = 0

    @property
    def activation_bytes(self) -> int:
        return sum(v[0] for v in self.activation.values())

    def largest(self, n: int = 8) -> list[dict]:
        """The biggest saved storages grouped by shape: where activation memory goes."""
        groups: dict[tuple, list[int]] = {}
        for nbytes, shape, dtype in self.activation.values():
            g = groups.setdefault((shape, dtype), [0, 0])
            g[0] += nbytes
            g[1] += 1
        top = sorted(groups.items(), key=lambda kv: -kv[1][0])[:n]
        return [{"shape": list(k[0]), "dtype": k[1], "count": v[1], "bytes": v[0]} for k, v in top]


@contextlib.contextmanager
def count_saved_tensors(model: torch.nn.Module) -> Iterator[SavedTensors]:
    """Record what the enclosed forward saves for backward (parameters and buffers excluded)."""
    weights = {}
    for t in list(model.parameters()) + list(model.buffers()):
        key = _storage_key(t)
        if key is not None:
            weights[key[0]] = key[1]
    saved = SavedTensors()
    weight_seen: set[int] = set()

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key is not None:
            ptr, nbytes = key
            if ptr in weights:
                if ptr not in weight_seen:
                    weight_seen.add(ptr)
                    saved.parameter_bytes += weights[ptr]
            elif ptr not in saved.activation or saved.activation[ptr][0] < nbytes:
                saved.activation[ptr] = (nbytes, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        # Returning the tensor itself: the hook observes, it never copies.
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


# --- process RSS (Linux) -----------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# Environment for a worker process: glibc returns freed memory to the OS at once, so
# peak RSS tracks what is live (mmap for every allocation >= 64 KiB, no heap hoarding).
RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def fast_malloc() -> bool:
    """Leave :data:`RSS_ENV` mode for glibc's usual steady state before timing.

    In RSS mode every allocation of 64 KiB or more is a fresh mmap whose pages fault in
    zeroed: that made a LoRA step at seq 1024 47% slower (4.67 s vs 3.18 s, one thread).
    32 MiB / 64 MiB are where glibc's own dynamic thresholds settle on 64-bit Linux.
    Switching the other way (to RSS mode after timing) is no good: the heap the timed
    steps grew stays fragmented and inflates peak RSS by ~10%.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20))
    except (OSError, AttributeError):
        return False


def malloc_trim() -> None:
    """Give freed heap memory back to the OS so the next peak starts from what is live."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> int | None:
    """Collect garbage, trim the heap and reset VmHWM; returns the RSS the step starts from."""
    gc.collect()
    malloc_trim()
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5 = reset the peak resident set size
    rss = _status_kib("VmRSS")
    return rss * 1024 if rss is not None else None


def peak_rss_bytes() -> int | None:
    hwm = _status_kib("VmHWM")
    return hwm * 1024 if hwm is not None else None
