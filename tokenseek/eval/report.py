"""Result tables: the paper's Table 1 layout, plus a per-task detail table."""

from __future__ import annotations

from tokenseek.eval.catalog import CATALOG, PAPER_TASKS

# (column header, task name) in the paper's order. The paper calls the ETHICS
# column "MMLU"; we name it for what it is and keep real MMLU separate.
PAPER_COLUMNS = [(CATALOG[name].column, name) for name in PAPER_TASKS]
PAPER_HEADERS = {"ETHICS": 'ETHICS ("MMLU" in the paper)'}


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def paper_row(results: dict) -> dict:
    """The five paper scores (0-1 or None), their average and MMLU for one results dict."""
    tasks = results.get("tasks", {})
    row = {column: (tasks.get(name) or {}).get("value") for column, name in PAPER_COLUMNS}
    present = [v for v in row.values() if v is not None]
    row["Average"] = sum(present) / len(present) if present else None
    row["complete"] = len(present) == len(PAPER_COLUMNS)
    row["MMLU"] = (tasks.get("mmlu") or {}).get("value")
    return row


def paper_table(runs: dict[str, dict]) -> str:
    """Markdown table with one row per run (label -> results from ``evaluate_tasks``).

    Scores are percentages like the paper's. An Average over fewer than the five
    columns is marked with ``*``.
    """
    columns = [column for column, _ in PAPER_COLUMNS]
    header = ["Model"] + [PAPER_HEADERS.get(c, c) for c in columns] + ["Average", "MMLU (real, separate)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, results in runs.items():
        row = paper_row(results)
        avg = _pct(row["Average"]) + ("" if row["complete"] or row["Average"] is None else "*")
        cells = [label] + [_pct(row[c]) for c in columns] + [avg, _pct(row["MMLU"])]
        lines.append("| " + " | ".join(cells) + " |")
    if any(not paper_row(r)["complete"] for r in runs.values()):
        lines.append("")
        lines.append("\\* average of the columns that were evaluated, not of all five.")
    return "\n".join(lines)


def detail_table(results: dict) -> str:
    """One line per task: metric, value ± stderr, items, shots, few-shot source."""
    lines = ["| Task | Metric | Value (%) | ± stderr | Items | Shots | Few-shot examples from |", "|---|---|---|---|---|---|---|"]
    for name, rec in results.get("tasks", {}).items():
        shots = rec["shots"] if isinstance(rec["shots"], int) else "mixed"
        lines.append(
            f"| {name} | {rec['metric']} | {_pct(rec['value'])} | {_pct(rec['stderr'])} | {rec['items']} | {shots} | {rec['fewshot_source']} |"
        )
    return "\n".join(lines)


def render(results: dict, label: str = "model") -> str:
    """Everything ``tokenseek eval`` prints: paper table, details, held-out loss, exact match."""
    parts = []
    if results.get("tasks"):
        parts += [paper_table({label: results}), "", detail_table(results)]
    held = results.get("heldout")
    if held:
        parts += ["", f"held-out loss {held['loss']:.4f} (perplexity {held['perplexity']:.2f}) over {held['tokens']} response tokens in {held['examples']} examples"]
    em = results.get("exact_match")
    if em:
        parts += [f"exact match {100 * em['accuracy']:.1f} % ({em['correct']} of {em['records']} greedy answers, at most {em['max_new_tokens']} new tokens)"]
    return "\n".join(parts)
