"""Per-task tables of a study whose held-out records name their task (generated data): exact
match and held-out loss per task, so a total can be traced to the kind of answer behind it
(a row may lose held-out loss on one long-answer task that no run answers right)."""

from __future__ import annotations

from tokenseek.experiment.config import Study
from tokenseek.experiment.stats import mean_of, percent


def _table(table_rows: list[dict], per_row: list[dict], fmt, top_line=None) -> list[str]:
    """Markdown lines: one column per task, one line per row with a measurement; ``top_line``
    (the task names -> that line's cells) adds a line above the rows."""
    measured = [(row, values) for row, values in zip(table_rows, per_row) if values]
    tasks = sorted({task for _, values in measured for task in values})
    head = ["setting", "runs"] + [f"`{t}`" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if top_line is not None:
        lines.append("| " + " | ".join(top_line(tasks)) + " |")
    for row, values in measured:
        runs = max(n for _, n in values.values())
        lines.append("| " + " | ".join([row["label"], str(runs)] + [fmt(values[t][0]) if t in values else "—" for t in tasks]) + " |")
    return lines


def task_accuracies(row: dict) -> dict[str, tuple[float, int]]:
    """``{task: (mean exact match over the row's seeds, seeds)}`` from the per-task breakdown."""
    per_task: dict[str, list[float]] = {}
    for _, r in row["done"]:
        for task, rec in ((r.get("exact_match") or {}).get("per_task") or {}).items():
            per_task.setdefault(task, []).append(rec["accuracy"])
    return {task: (mean_of(values), len(values)) for task, values in sorted(per_task.items())}


def task_table(table_rows: list[dict]) -> str | None:
    """Exact match per task (rows × tasks), or None when no cell has a per-task breakdown:
    shows on which kinds of answer a selection loses or gains, not only the total."""
    per_row = [task_accuracies(row) for row in table_rows]
    if not any(per_row):
        return None
    lines = _table(table_rows, per_row, percent)
    return "\n".join(lines) + "\n\nExact match in % per task of the test set (mean over the row's finished seeds)."


def heldout_tasks(study: Study) -> list[str] | None:
    """The task of each held-out record, in order, when the study's data is generated and its
    records name their task; None otherwise. Generating is instant and seeded, and the runner
    refuses a generator whose records changed, so these are the records the cells scored."""
    spec = study.data_spec()
    if "generator" not in spec:
        return None
    from tokenseek.data.generators import generate_splits

    _, test = generate_splits(spec["generator"], spec["train"], spec["test"], spec["seed"])
    tasks = [record.get("task") for record in test]
    return tasks if tasks and all(isinstance(t, str) for t in tasks) else None


def task_losses(row: dict, tasks: list[str]) -> dict[str, tuple[float, int]]:
    """``{task: (held-out loss, seeds)}``: per seed the token-weighted mean over the task's
    records (as the total is over all records), then the mean over the row's seeds."""
    per_task: dict[str, list[float]] = {}
    for _, r in row["done"]:
        heldout = r.get("heldout") or {}
        losses, tokens = heldout.get("per_example_loss"), heldout.get("per_example_tokens")
        if not losses or not tokens or len(losses) > len(tasks):
            continue
        sums: dict[str, list[float]] = {}
        for task, loss, count in zip(tasks, losses, tokens):
            if loss is not None and count:
                total = sums.setdefault(task, [0.0, 0])
                total[0] += loss * count
                total[1] += count
        for task, (weighted, count) in sums.items():
            per_task.setdefault(task, []).append(weighted / count)
    return {task: (mean_of(values), len(values)) for task, values in sorted(per_task.items())}


def _answer_tokens(table_rows: list[dict], tasks: list[str]) -> dict[str, int]:
    """The scored answer tokens per task, from the first cell with per-example counts (every
    cell scores the same records)."""
    for row in table_rows:
        for _, r in row["done"]:
            tokens = (r.get("heldout") or {}).get("per_example_tokens")
            if tokens and len(tokens) <= len(tasks):
                counts: dict[str, int] = {}
                for task, count in zip(tasks, tokens):
                    counts[task] = counts.get(task, 0) + count
                return counts
    return {}


def heldout_task_table(table_rows: list[dict], tasks: list[str] | None) -> str | None:
    """Held-out loss per task (rows × tasks), with each task's share of the scored answer
    tokens on top (the total loss weighs tasks by it); None without task names or losses."""
    if not tasks:
        return None
    per_row = [task_losses(row, tasks) for row in table_rows]
    if not any(per_row):
        return None
    counts = _answer_tokens(table_rows, tasks)
    total = sum(counts.values()) or 1

    def share(names: list[str]) -> list[str]:
        return ["share of answer tokens", ""] + [percent(counts.get(t, 0) / total) + " %" for t in names]

    lines = _table(table_rows, per_row, lambda x: "—" if x is None else f"{x:.3f}", share)
    return "\n".join(lines) + (
        "\n\nHeld-out loss per task of the test set (token-weighted within a seed, then the mean over the row's finished "
        "seeds); the first line is each task's share of the answer tokens the total loss averages over."
    )
