"""``tokenseek bench``: run each configuration in its own worker process and relate it to full-token training.

For every (PEFT method, sequence length) group the benchmark measures full-token
training (ratio 1.0: the trainer's ordinary single-pass step), ditching at each
other ratio, and the scoring stage (``tokenseek.seeking.seek``), then reports every
figure both absolute and as a fraction of full-token training from the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenseek.bench import memory
from tokenseek.bench.knobs import BASELINE
from tokenseek.errors import TokenSeekError
from tokenseek.models.adapters import PEFT_METHODS
from tokenseek.utils.io import write_json, write_text
from tokenseek.utils.options import check_options, option

DEFAULT_RATIOS = (1.0, 0.5, 0.3, 0.1, 0.05)


@dataclass
class BenchConfig:
    """The options of ``tokenseek bench`` that are its own; model, adapter and precision options are TrainConfig's."""

    model: str | None = None
    lora: dict = field(default_factory=dict)  # apply_peft keyword arguments (tokenseek.models.adapters.adapter_kwargs)
    dtype: str = "auto"  # --dtype; each worker resolves it on its device (tokenseek.models.placement)
    context_chunk: int | None = None  # --context-chunk; None: each worker's device default
    pefts: list[str] = option(default_factory=lambda: ["lora"], help="adapter methods to measure", choices=PEFT_METHODS, comma=True, flag="peft")
    seq_lens: list[int] = option(default_factory=lambda: [1024], help="tokens per example; several run one after another", comma=True, flag="seq_len", minimum=2)
    batch_size: int = option(1, "examples per step", minimum=1)
    ratios: list[float] = option(
        default_factory=lambda: list(DEFAULT_RATIOS), help="ratios to measure; 1.0 is always added", comma=True, above=0, maximum=1
    )
    steps: int = option(3, "timed steps per configuration (3 or more for a meaningful median)", minimum=1)
    warmup: int = option(1, "untimed steps first; AdamW creates its state here", minimum=1)
    seed: int = option(0, "seed of the synthetic input and the adapters", minimum=0)
    score: bool = option(True, "also measure the scoring stage (tokenseek.seeking.seek)")
    score_ratio: float = option(0.1, "ratio passed to seek in the scoring stage", above=0, maximum=1)
    score_gradient: bool = option(
        False,
        "the scoring stage also runs the partial backward for the gradient score, which selections that read it "
        "need (the paper's alpha,beta = 1,1 over all positions)",
        shown="context only, as train scores with its default selection",
    )
    jobs: int = option(1, "workers at a time; timings are only meaningful with 1", minimum=1)
    threads: int | None = option(
        None, "intra-op threads per worker; 1 is steadier on a busy machine", shown="torch's, one per core", minimum=1
    )
    timeout: float | None = option(None, "seconds before a configuration is recorded as failed", above=0)
    output: str = option("bench", "output directory", shown="bench, or bench-knobs with --knobs")
    knobs: str | None = option(
        None,
        "instead of the ratio sweep, measure settings side by side against a baseline: 'memory' = full-token, "
        "+ checkpointing, + chunked CE (the baseline) vs TokenSeek alone and stacked with both; 'sweep' = the baseline "
        "vs TokenSeek + checkpointing + chunked CE only (for many --seq-len values); 'online' = full-token vs offline vs "
        "online seeking. Uses the first --ratios value below 1 (default 0.1)",
        choices=tuple(BASELINE),  # the presets
    )
    target_share: float = option(
        1.0,
        "with --knobs: share of each example's positions that carry a label, the rest being a masked prompt "
        "(1.0: labels on every token; Alpaca-style data is about 0.5)",
        above=0,
        maximum=1,
    )

    def __post_init__(self) -> None:
        check_options(self)


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
                "score_gradient": cfg.score_gradient,
                "threads": cfg.threads,
                "dtype": cfg.dtype,
                "context_chunk": cfg.context_chunk,
            }
            specs += [{**base, "mode": "train", "ratio": r} for r in ratios]
            if cfg.score:
                specs.append({**base, "mode": "score", "ratio": cfg.score_ratio})
    return specs


def run_bench(cfg: BenchConfig, progress=print) -> dict:
    """Measure every configuration, write bench.json / bench.md / bench.png / breakdown.png."""
    from tokenseek.bench import report

    check_options(cfg)  # again: the fields may have been changed since construction
    model = resolve(cfg.model)
    specs = worker_specs(cfg, model)

    def measure(spec: dict) -> dict:
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
