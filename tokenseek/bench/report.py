"""Benchmark reports: Tab. 2-style Markdown tables, a Fig. 6-style chart and a Fig. 1(a)-style breakdown."""

from __future__ import annotations

from pathlib import Path

MIB = 2**20


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _mib(x) -> str:
    if x is None:
        return "–"
    # Tiny test models live in the sub-MiB range: keep a decimal there.
    return f"{x / MIB:,.0f}" if abs(x) >= 10 * MIB else f"{x / MIB:.2f}"


def _g(r: dict, *path):
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def _title(g: dict) -> str:
    names = {"none": "full parameters", "lora": "LoRA", "qlora": "QLoRA (NF4)", "loha": "LoHa", "lokr": "LoKr", "ia3": "IA3"}
    return f"{names.get(g['peft'], g['peft'])}, seq {g['seq_len']}"


def _ratio_label(r: dict) -> str:
    ratio = r["spec"]["ratio"]
    return "100% (full token)" if ratio == 1.0 else f"{100 * ratio:g}%"


def breakdown(r: dict) -> dict | None:
    """Fig. 1(a) components: parameters, gradients + AdamW state, activations, the rest of the peak."""
    params, peak, act = _g(r, "params"), _g(r, "memory", "peak_bytes"), _g(r, "activations", "saved_bytes")
    if params is None or peak is None:
        return None
    grads_opt = params["grad_bytes"] + params["optimizer_bytes"]
    other = peak - params["param_bytes"] - grads_opt - (act or 0)
    return {"parameters": params["param_bytes"], "gradients + AdamW": grads_opt, "activations": act or 0, "other at peak": other}


def _scoring_label(spec: dict) -> str:
    # Results written before the context-only scoring stage have no "score_gradient": they ran both.
    scores = "context + gradient" if spec.get("score_gradient", True) else "context only"
    return f"scoring ({scores}, {100 * spec['score_ratio']:g}%)"


def group_table(g: dict, timing: bool = True) -> str:
    """Tab. 2 layout: one row per ratio (+ the scoring stage); ``timing=False`` drops the time columns."""
    cols = ["Ratio", "Ave. Mem.", "Max. Mem.", "Ave. Mem. (MiB)", "Max. Mem. (MiB)", "Peak RSS (MiB)", "Activations (MiB)", "Activations"]
    if timing:
        cols += ["Step time (s)", "Step time", "CPU time"]
    head = "| " + " | ".join(cols) + " |\n|---" + "|---:" * (len(cols) - 1) + "|\n"
    lines = []
    for r in g["rows"] + ([g["score"]] if g["score"] else []):
        label = _scoring_label(r["spec"]) if r["spec"]["mode"] == "score" else _ratio_label(r)
        if "error" in r:
            lines.append(f"| {label} | {r['error']} " + "|" * (len(cols) - 1))
            continue
        rel, t = r["relative"], _g(r, "time", "step_s")
        rss = _g(r, "rss", "peak_bytes")
        cells = [
            label,
            _pct(rel["average_bytes"]),
            _pct(rel["peak_bytes"]),
            _mib(_g(r, "memory", "average_bytes")),
            _mib(_g(r, "memory", "peak_bytes")),
            "–" if rss is None else f"{_mib(rss)} ({_pct(rel['peak_rss_bytes'])})",
            _mib(_g(r, "activations", "saved_bytes")),
            _pct(rel["activation_bytes"]),
        ]
        if timing:
            cells += [
                "–" if t is None else f"{t['median']:.2f} [{t['min']:.2f}–{t['max']:.2f}]",
                "–" if rel["step_s"] is None else f"{rel['step_s']:.2f}×",
                "–" if rel.get("step_cpu_s") is None else f"{rel['step_cpu_s']:.2f}×",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def phase_table(g: dict) -> str:
    """Where the step time goes (medians, seconds): the context pass is the floor of ditching's cost."""
    head = "| Ratio | forward (all) | context pass (no grad) | kept / full pass | backward | optimizer |\n|---|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in g["rows"]:
        p = _g(r, "time", "phases")
        if not p:
            continue
        calls = p.get("decoder_calls") or []
        ctx, kept = (calls[0], calls[1]) if len(calls) == 2 else (None, calls[0] if calls else None)
        f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
        lines.append(f"| {_ratio_label(r)} | {f(p.get('forward'))} | {f(ctx)} | {f(kept)} | {f(p.get('backward'))} | {f(p.get('optimizer'))} |")
    return head + "\n".join(lines) + "\n" if lines else ""


def breakdown_table(g: dict) -> str:
    head = "| Ratio | Parameters | Gradients + AdamW | Activations (saved) | Other at peak | Max. Mem. |\n|---|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in g["rows"]:
        b = breakdown(r)
        if b:
            lines.append(
                f"| {_ratio_label(r)} | {_mib(b['parameters'])} | {_mib(b['gradients + AdamW'])} | {_mib(b['activations'])} | "
                f"{_mib(b['other at peak'])} | {_mib(_g(r, 'memory', 'peak_bytes'))} |"
            )
    return head + "\n".join(lines) + "\n" if lines else ""


def markdown(doc: dict) -> str:
    env, cfg = doc.get("environment", {}), doc["config"]
    out = [
        "# tokenseek bench",
        "",
        f"Model `{cfg['model'] or 'SmolLM2-135M-Instruct (default)'}`; batch {cfg['batch_size']}; "
        f"{cfg['warmup']} warm-up + {cfg['steps']} timed steps per configuration, each in a fresh process; "
        f"{doc['input']}.",
        f"Device: {env.get('device', '?')} ({env.get('gpu') or env.get('cpu', '?')}, {env.get('threads', '?')} threads); "
        f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, peft {env.get('peft', '?')}.",
        _load_line(doc),
        "",
        "Percentages are relative to full-token training (ratio 100%) of the same table. "
        "Ave./Max. Mem.: time-weighted mean / peak of live tensor bytes over one step "
        "(CPU: profiler memory events; CUDA: max_memory_allocated). Peak RSS: process resident set, runtime included. "
        "Activations: bytes autograd saved for backward (parameters excluded). "
        "Step time: wall time of forward + backward + AdamW step, median [min–max], and its ratio to full-token; "
        "CPU time: the same ratio for the process's CPU seconds (steadier when other processes share the cores).",
        "",
    ]
    for g in doc["groups"]:
        out += [f"## {_title(g)}", "", group_table(g)]
        phases = phase_table(g)
        if phases:
            out += ["Step time by phase (s, median):", "", phases]
        parts = breakdown_table(g)
        if parts:
            out += ["Memory breakdown (MiB; Fig. 1(a) components):", "", parts]
    return "\n".join(out)


def _load_line(doc: dict) -> str:
    """Other processes on the same cores inflate wall times (never memory): say how busy the machine was."""
    loads = [v for g in doc["groups"] for r in g["rows"] + ([g["score"]] if g["score"] else []) for v in (_g(r, "loadavg") or {}).values()]
    if not loads:
        return ""
    return f"1-minute load average during the runs: {min(loads):.1f}–{max(loads):.1f} (machine with {doc.get('environment', {}).get('cores', '?')} cores)."


def plot_memory(doc: dict, path: str | Path) -> None:
    """Fig. 6: bars = average memory, dashed line with markers = peak, per ratio and PEFT setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq_lens = sorted({g["seq_len"] for g in doc["groups"]})
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(6.5 * len(seq_lens), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, seq_len in zip(axes[0], seq_lens):
        groups = [g for g in doc["groups"] if g["seq_len"] == seq_len]
        ratios = sorted({r["spec"]["ratio"] for g in groups for r in g["rows"]}, reverse=True)
        width = 0.8 / max(len(groups), 1)
        for i, g in enumerate(groups):
            by_ratio = {r["spec"]["ratio"]: r for r in g["rows"] if "memory" in r}
            xs = [j + (i - (len(groups) - 1) / 2) * width for j, ratio in enumerate(ratios) if ratio in by_ratio]
            ok = [ratio for ratio in ratios if ratio in by_ratio]
            avg = [by_ratio[ratio]["memory"]["average_bytes"] / 2**30 for ratio in ok]
            peak = [by_ratio[ratio]["memory"]["peak_bytes"] / 2**30 for ratio in ok]
            color = colors[i % len(colors)]
            ax.bar(xs, avg, width=width, color=color, alpha=0.6, label=f"{_title(g).split(',')[0]} average")
            ax.plot(xs, peak, "--o", color=color, label=f"{_title(g).split(',')[0]} peak")
        ax.set_xticks(range(len(ratios)), [f"{100 * r:g}%" for r in ratios])
        ax.set_xlabel("ratio of tunable tokens")
        ax.set_ylabel("training memory (GiB of live tensors)")
        ax.set_title(f"seq {seq_len}, batch {doc['config']['batch_size']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_breakdown(doc: dict, path: str | Path) -> None:
    """Fig. 1(a): stacked parameters / gradients + optimizer / activations / other, per setting and ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars, labels = [], []
    for g in doc["groups"]:
        for r in g["rows"]:
            b = breakdown(r)
            if b:
                bars.append(b)
                labels.append(f"{g['peft']}\nseq {g['seq_len']}\n{100 * r['spec']['ratio']:g}%")
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(bars) + 2), 4.5))
    if bars:
        bottom = [0.0] * len(bars)
        for part in bars[0]:
            values = [max(b[part], 0) / 2**30 for b in bars]
            ax.bar(range(len(bars)), values, bottom=bottom, label=part)
            bottom = [x + y for x, y in zip(bottom, values)]
        ax.set_xticks(range(len(bars)), labels, fontsize=7)
    ax.set_ylabel("GiB")
    ax.set_title("Training memory breakdown at the step's peak")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
