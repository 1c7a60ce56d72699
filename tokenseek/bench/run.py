"""``tokenseek bench``: run each configuration in its own worker process and relate it to full-token training.

For every (PEFT method, sequence length) group the benchmark measures full-token
training (ratio 1.0: the trainer's ordinary single-pass step), ditching at each
other ratio, and the scoring stage (``tokenseek.seeking.seek``), then reports every
figure both absolute and as a fraction of full-token training from the same run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenseek.bench import memory
from tokenseek.errors import TokenSeekError
from tokenseek.utils.io import write_json, write_text

DEFAULT_RATIOS = (1.0, 0.5, 0.3, 0.1, 0.05)


@dataclass
class BenchConfig:
    model: str | None = None
    pefts: list[str] = field(default_factory=lambda: ["lora"])
    seq_lens: list[int] = field(default_factory=lambda: [1024])
    batch_size: int = 1
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    steps: int = 3
    warmup: int = 1
    seed: int = 0
    score: bool = True
    score_ratio: float = 0.1
    lora: dict = field(default_factory=dict)
    output: str = "bench"
    jobs: int = 1
    threads: int | None = None
    timeout: float | None = None
    dtype: str = "auto"  # --dtype; each worker resolves it on its device (tokenseek.models.placement)


def parse_list(text: str, kind, flag: str) -> list:
    """``"1.0,0.5"`` -> ``[1.0, 0.5]``; a one-line error naming the flag otherwise."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise TokenSeekError(f"{flag} is empty: give a comma-separated list")
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise TokenSeekError(f"{flag} {text!r} is not a comma-separated list of {kind.__name__} values") from None


def validate(cfg: BenchConfig) -> None:
    from tokenseek.models.adapters import PEFT_METHODS

    for ratio in cfg.ratios:
        if not (0 < ratio <= 1) or math.isnan(ratio):
            raise TokenSeekError(f"--ratios must lie in (0, 1], got {ratio}")
    for method in cfg.pefts:
        if method not in PEFT_METHODS:
            raise TokenSeekError(f"unknown --peft {method!r}: choose from {', '.join(PEFT_METHODS)}")
    if any(n < 2 for n in cfg.seq_lens):
        raise TokenSeekError("--seq-len must be at least 2 (one input and one target token)")
    if cfg.batch_size < 1:
        raise TokenSeekError("--batch-size must be at least 1")
    if cfg.steps < 1:
        raise TokenSeekError("--steps must be at least 1 (3 or more for a meaningful median)")
    if cfg.warmup < 1:
        raise TokenSeekError("--warmup must be at least 1: AdamW creates its state in the first step")
    if cfg.jobs < 1:
        raise TokenSeekError("--jobs must be at least 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise TokenSeekError("--threads must be at least 1")
    if not (0 < cfg.score_ratio <= 1):
        raise TokenSeekError(f"--score-ratio must lie in (0, 1], got {cfg.score_ratio}")


def resolve(model: str | None) -> str:
    """Resolve (and convert a GGUF file) once here, so workers never race on the conversion."""
    from tokenseek.models.loading import resolve_model

    return resolve_model(model)


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    """Run one configuration in a fresh ``python -m tokenseek.bench.worker`` process."""
    env = {**os.environ, **memory.RSS_ENV, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="tokenseek-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "tokenseek.bench.worker", str(spec_path), str(result_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"spec": spec, "error": f"timed out after {timeout:.0f} s"}
        if result_path.is_file():
            result = json.loads(result_path.read_text())
        else:  # killed (e.g. by the OOM killer) before it could write anything
            tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit status {proc.returncode}"]
            result = {"spec": spec, "error": f"worker died: {tail[0]}"}
    if result.get("user_error"):
        raise TokenSeekError(result["error"])
    return result


def worker_specs(cfg: BenchConfig, model: str) -> list[dict]:
    from tokenseek.bench.worker import load_seek

    ratios = sorted(set(cfg.ratios) | {1.0}, reverse=True)  # full-token is the reference: always measured
    specs = []
    for method in cfg.pefts:
        for seq_len in cfg.seq_lens:
            base = {
                "model": model,
                "peft": method,
                "lora": cfg.lora,
                "seq_len": seq_len,
                "batch_size": cfg.batch_size,
                "steps": cfg.steps,
                "warmup": cfg.warmup,
                "seed": cfg.seed,
                "score_ratio": cfg.score_ratio,
                "threads": cfg.threads,
                "dtype": cfg.dtype,
            }
            specs += [{**base, "mode": "train", "ratio": r} for r in ratios]
            if cfg.score:
                specs.append({**base, "mode": "score", "ratio": cfg.score_ratio, "available": load_seek() is not None})
    return specs


def run_bench(cfg: BenchConfig, progress=print) -> dict:
    """Measure every configuration, write bench.json / bench.md / bench.png / breakdown.png."""
    from tokenseek.bench import report

    validate(cfg)
    model = resolve(cfg.model)
    specs = worker_specs(cfg, model)

    def measure(spec: dict) -> dict:
        if spec.pop("available", True) is False:
            return {"spec": spec, "skipped": "tokenseek.seeking.seek is not available in this tree yet"}
        result = run_worker(spec, cfg.timeout)
        progress(f"  {describe(spec)}: {short(result)}")
        return result

    progress(f"benchmarking {len(specs)} configurations ({cfg.jobs} at a time)")
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        results = list(pool.map(measure, specs))
    doc = {
        "config": {**asdict(cfg), "model_resolved": model},
        "input": f"synthetic: {cfg.batch_size} x {cfg.seq_lens} random token ids, labels on every token",
        "environment": next((r["environment"] for r in results if "environment" in r), {}),
        "groups": [add_relative(g) for g in group(results)],
    }
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", doc)
    write_text(out / "bench.md", report.markdown(doc))
    report.plot_memory(doc, out / "bench.png")
    report.plot_breakdown(doc, out / "breakdown.png")
    return doc


def describe(spec: dict) -> str:
    what = "scoring" if spec["mode"] == "score" else f"ratio {spec['ratio']:g}"
    return f"{spec['peft']} seq {spec['seq_len']} {what}"


def short(result: dict) -> str:
    if "error" in result:
        return f"FAILED ({result['error']})"
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    mib = result["memory"]["peak_bytes"] / 2**20
    t = result.get("time", {}).get("step_s", {}).get("median")
    return f"peak {mib:,.0f} MiB" + (f", {t:.2f} s/step" if t is not None else "")


def group(results: list[dict]) -> list[dict]:
    """One group per (PEFT method, sequence length), in the order measured."""
    groups: dict[tuple, dict] = {}
    for r in results:
        s = r["spec"]
        g = groups.setdefault((s["peft"], s["seq_len"]), {"peft": s["peft"], "seq_len": s["seq_len"], "rows": [], "score": None})
        if s["mode"] == "score":
            g["score"] = r
        else:
            g["rows"].append(r)
    return list(groups.values())


def _get(result: dict, *path):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


# figure name -> where it lives in a worker result
FIGURES = {
    "peak_bytes": ("memory", "peak_bytes"),
    "average_bytes": ("memory", "average_bytes"),
    "activation_bytes": ("activations", "saved_bytes"),
    "peak_rss_bytes": ("rss", "peak_bytes"),
    "step_s": ("time", "step_s", "median"),
    "step_cpu_s": ("time", "cpu_s", "median"),
}


def add_relative(g: dict) -> dict:
    """Attach ``relative``: each figure divided by the full-token (ratio 1.0) figure of the same group."""
    full = next((r for r in g["rows"] if r["spec"]["ratio"] == 1.0 and "error" not in r), None)
    for r in g["rows"] + ([g["score"]] if g["score"] else []):
        rel = {}
        for name, path in FIGURES.items():
            mine, ref = _get(r, *path), _get(full, *path) if full else None
            rel[name] = mine / ref if mine is not None and ref else None
        r["relative"] = rel
    return g
