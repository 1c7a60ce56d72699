"""``tokenseek bench --knobs``: the memory/time knobs side by side, relative to the baseline to beat.

Each setting runs in its own worker process (as every benchmark configuration does) on the
same synthetic batch, and every figure is also given as a multiple of one baseline setting
measured in the same run:

- ``memory``: what users run when memory is short — full-token training with gradient
  checkpointing and a chunked cross-entropy — against token ditching alone and stacked
  with the same two tools (issue: "Train the way GPU users train").
- ``sweep``: the baseline against the best TokenSeek setting only, for a sequence-length sweep.
- ``online``: full-token, ditching with offline selection, ditching with online seeking —
  what seeking inside the step costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenseek.bench.memory import PHASES
from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK
from tokenseek.errors import TokenSeekError
from tokenseek.utils.io import write_json, write_text

CHUNK = DEFAULT_LOSS_CHUNK
BASELINE = {
    "memory": "full-token + checkpointing + chunked CE",
    "sweep": "full-token + checkpointing + chunked CE",
    "online": "full-token",
}


def presets(ratio: float) -> dict[str, list[tuple[str, dict]]]:
    pct = f"{100 * ratio:g} %"
    return {
        "memory": [
            ("full-token", dict(ratio=1.0, loss_chunk=0)),
            ("full-token + checkpointing", dict(ratio=1.0, loss_chunk=0, checkpointing=True)),
            ("full-token + checkpointing + chunked CE", dict(ratio=1.0, loss_chunk=CHUNK, checkpointing=True)),
            (f"TokenSeek {pct}", dict(ratio=ratio, loss_chunk=0)),
            (f"TokenSeek {pct} + chunked CE", dict(ratio=ratio, loss_chunk=CHUNK)),
            (f"TokenSeek {pct} + checkpointing + chunked CE", dict(ratio=ratio, loss_chunk=CHUNK, checkpointing=True)),
            (f"TokenSeek {pct} online + checkpointing + chunked CE", dict(ratio=ratio, loss_chunk=CHUNK, checkpointing=True, online=True)),
        ],
        "sweep": [
            ("full-token + checkpointing + chunked CE", dict(ratio=1.0, loss_chunk=CHUNK, checkpointing=True)),
            (f"TokenSeek {pct} + checkpointing + chunked CE", dict(ratio=ratio, loss_chunk=CHUNK, checkpointing=True)),
        ],
        "online": [
            ("full-token", dict(ratio=1.0, loss_chunk=CHUNK)),
            (f"TokenSeek {pct}, offline scores", dict(ratio=ratio, loss_chunk=CHUNK)),
            (f"TokenSeek {pct}, online seeking", dict(ratio=ratio, loss_chunk=CHUNK, online=True)),
            (f"TokenSeek {pct}, online seeking, α,β = 1,0", dict(ratio=ratio, loss_chunk=CHUNK, online=True, beta=0.0)),
        ],
    }


@dataclass
class KnobsConfig:
    preset: str = "memory"
    model: str | None = None
    peft: str = "lora"
    seq_lens: list[int] = field(default_factory=lambda: [1024])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    ratio: float = 0.1
    target_share: float = 1.0
    context_chunk: int | None = None  # tokens per context-pass call; None: the device's default
    steps: int = 3
    warmup: int = 1
    seed: int = 0
    threads: int | None = None
    timeout: float | None = None
    lora: dict = field(default_factory=dict)
    output: str = "bench-knobs"


def run_knobs(cfg: KnobsConfig, progress=print) -> dict:
    from tokenseek.bench.run import resolve, run_worker, short

    table = presets(cfg.ratio)
    if cfg.preset not in table:
        raise TokenSeekError(f"unknown --knobs preset {cfg.preset!r}: choose one of {', '.join(table)}")
    model = resolve(cfg.model)
    groups = []
    for dtype in cfg.dtypes:
        for seq_len in cfg.seq_lens:
            rows = []
            for name, knobs in table[cfg.preset]:
                spec = {
                    "model": model, "peft": cfg.peft, "lora": cfg.lora, "seq_len": seq_len, "batch_size": 1,
                    "mode": "train", "steps": cfg.steps, "warmup": cfg.warmup, "seed": cfg.seed,
                    "threads": cfg.threads, "dtype": dtype, "target_share": cfg.target_share,
                    "context_chunk": cfg.context_chunk, **knobs,
                }
                result = run_worker(spec, cfg.timeout)
                progress(f"  {dtype} seq {seq_len} {name}: {short(result)}")
                rows.append({"setting": name, "result": result})
            add_relative(rows, BASELINE[cfg.preset])
            groups.append({"dtype": dtype, "seq_len": seq_len, "baseline": BASELINE[cfg.preset], "rows": rows})
    doc = {"config": {**asdict(cfg), "model_resolved": model}, "groups": groups}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "knobs.json", doc)
    write_text(out / "knobs.md", markdown(doc))
    return doc


def step_peak_bytes(result: dict) -> int | None:
    """The step's peak live bytes above what was live before it (weights, optimizer state)."""
    memory = result.get("memory") or {}
    if memory.get("peak_bytes") is None or memory.get("baseline_bytes") is None:
        return None
    return memory["peak_bytes"] - memory["baseline_bytes"]


def add_relative(rows: list[dict], baseline_name: str) -> None:
    """Each row's figures as multiples of the baseline row's (``row["relative"]``)."""
    from tokenseek.bench.run import FIGURES, _get

    baseline = next(r["result"] for r in rows if r["setting"] == baseline_name)
    for r in rows:
        r["relative"] = {}
        for figure, path in FIGURES.items():
            mine, ref = _get(r["result"], *path), _get(baseline, *path)
            r["relative"][figure] = mine / ref if mine is not None and ref else None
        mine, ref = step_peak_bytes(r["result"]), step_peak_bytes(baseline)
        r["relative"]["step_peak_bytes"] = mine / ref if mine is not None and ref else None


def peak_phase(result: dict) -> str:
    """The phase of the step (context pass, kept pass, backward) with the highest live bytes."""
    phases = (result.get("memory") or {}).get("phase_peak_bytes") or {}
    if not phases:
        return "–"
    top = max(phases, key=phases.get)
    return PHASES.get(top, top)


def chunk_note(config: dict, env: dict) -> str:
    """How the ditched rows ran their context pass (files before the option existed: the CPU's 256)."""
    from tokenseek.ditching.forward import context_chunk

    if "context_chunk" not in config:
        chunk = 256  # files before the option: every device ran 256-token pieces
    elif config["context_chunk"] is None:
        chunk = context_chunk(env.get("device") or "cpu")
    else:
        chunk = config["context_chunk"]
    return ", context pass in one call" if chunk == 0 else f", context pass in pieces of {chunk} tokens"


def markdown(doc: dict) -> str:
    from tokenseek.bench.run import _get

    def mib(x):
        return "–" if x is None else f"{x / 2**20:,.0f}" if x >= 10 * 2**20 else f"{x / 2**20:.2f}"

    def times(x):
        return "–" if x is None else f"{x:.2f}×"

    parts = []
    for g in doc["groups"]:
        env = next((r["result"].get("environment") for r in g["rows"] if "environment" in r["result"]), {}) or {}
        parts.append(
            f"### {doc['config']['peft']}, {g['dtype']}, seq {g['seq_len']}, "
            f"labels on {100 * doc['config'].get('target_share', 1.0):g} % of positions{chunk_note(doc['config'], env)} "
            f"({env.get('device', '?')}, {env.get('threads', '?')} thread(s)); ratios against **{g['baseline']}**\n"
        )
        parts.append(
            "| setting | step peak above weights (MiB) | peak live (MiB) | activations (MiB) | step (s) "
            "| step peak × | activations × | step time × | peak in |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"
        )
        for r in g["rows"]:
            res, rel = r["result"], r["relative"]
            if "error" in res:
                parts.append(f"| {r['setting']} | failed: {res['error']} | | | | | | | |")
                continue
            step = _get(res, "time", "step_s", "median")
            parts.append(
                f"| {r['setting']} | {mib(step_peak_bytes(res))} | {mib(_get(res, 'memory', 'peak_bytes'))} | "
                f"{mib(_get(res, 'activations', 'saved_bytes'))} | {'–' if step is None else f'{step:.2f}'} | "
                f"{times(rel['step_peak_bytes'])} | {times(rel['activation_bytes'])} | {times(rel['step_s'])} | "
                f"{peak_phase(res)} |"
            )
        parts.append("")
    return "\n".join(parts) + "\n"
