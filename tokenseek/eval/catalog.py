"""The local benchmark tasks: what users type, what lm-eval runs, and what the paper reports.

Users type the paper's / lm-eval's names (``arc_challenge``, ``hellaswag``, ...);
they map to our ``tokenseek_*`` tasks, which read the local files because the
Hugging Face Hub is unreachable here. Any other name goes to lm-eval unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tokenseek.errors import TokenSeekError

TASKS_DIR = Path(__file__).parent / "tasks"
DATA_ENV = "TOKENSEEK_EVAL_DATA"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "eval"  # relative to the working directory

# The five columns of the paper's Table 1, in its order, then real MMLU.
PAPER_TASKS = ("arc_challenge", "hellaswag", "ethics", "truthfulqa_mc2", "winogrande")
DEFAULT_TASKS = PAPER_TASKS + ("mmlu",)

_SAME_SPLIT = "same split as scored, excluding the scored item (no train/dev split is local)"

ETHICS_SUBSETS = {
    "ethics_cm": "ethics/commonsense/cm_test.csv",
    "ethics_deontology": "ethics/deontology/deontology_test.csv",
    "ethics_justice": "ethics/justice/justice_test.csv",
    "ethics_utilitarianism": "ethics/utilitarianism/util_test.csv",
    "ethics_virtue": "ethics/virtue/virtue_test.csv",
}


def mmlu_subjects() -> list[str]:
    """The 57 subjects, read from the shipped task YAMLs (one file per subject)."""
    names = sorted(p.stem for p in (TASKS_DIR / "mmlu").glob("tokenseek_mmlu_*.yaml"))
    return [n.removeprefix("tokenseek_mmlu_") for n in names]


@dataclass(frozen=True)
class LocalTask:
    name: str  # what users type and what results are keyed by
    lm_eval_name: str  # our lm-eval task or group
    metric: str  # the paper's metric (lm-eval metric key)
    shots: int  # the default number of few-shot examples
    split: str  # the scored split
    fewshot_source: str
    files: tuple[str, ...]  # data files, relative to the data directory
    column: str | None = None  # column in the paper's table
    max_shots: int | None = None  # few-shot pool size when it is small (MMLU dev: 5)
    hub_name: str | None = None  # lm-eval's own task for --hub (default: same as name)

    @property
    def hub_task(self) -> str:
        return self.hub_name or self.name


def _catalog() -> dict[str, LocalTask]:
    tasks = [
        LocalTask("arc_challenge", "tokenseek_arc_challenge", "acc_norm", 25, "test", _SAME_SPLIT, ("arc/arc_challenge.jsonl",), "ARC"),
        LocalTask("arc_easy", "tokenseek_arc_easy", "acc_norm", 25, "test", _SAME_SPLIT, ("arc/arc_easy.jsonl",)),
        LocalTask("hellaswag", "tokenseek_hellaswag", "acc_norm", 10, "validation", _SAME_SPLIT, ("hellaswag/hellaswag_val.jsonl",), "HellaSwag"),
        LocalTask(
            "ethics", "tokenseek_ethics", "acc", 5, "test", _SAME_SPLIT, tuple(ETHICS_SUBSETS.values()), "ETHICS",
            hub_name="hendrycks_ethics",  # a tag in lm-eval: no aggregate, we average the five
        ),
        LocalTask("truthfulqa_mc2", "tokenseek_truthfulqa_mc2", "acc", 0, "validation", "none (fixed 6-QA prompt, as lm-eval)", ("truthfulqa/mc_task.json",), "TruthfulQA"),
        LocalTask("truthfulqa_mc1", "tokenseek_truthfulqa_mc1", "acc", 0, "validation", "none (fixed 6-QA prompt, as lm-eval)", ("truthfulqa/mc_task.json",)),
        LocalTask("winogrande", "tokenseek_winogrande", "acc", 0, "validation", "none (0-shot)", ("winogrande/winogrande.jsonl",), "WinoGrande"),
    ]
    for name, path in ETHICS_SUBSETS.items():
        tasks.append(LocalTask(name, f"tokenseek_{name}", "acc", 5, "test", _SAME_SPLIT, (path,)))
    subjects = mmlu_subjects()
    dev_source = "dev split, first 5 rows of the subject (as lm-eval's mmlu)"
    mmlu_files = tuple(f"mmlu/{split}/{s}_{split}.csv" for s in subjects for split in ("test", "dev"))
    tasks.append(LocalTask("mmlu", "tokenseek_mmlu", "acc", 5, "test", dev_source, mmlu_files, "MMLU", max_shots=5))
    for s in subjects:
        files = (f"mmlu/test/{s}_test.csv", f"mmlu/dev/{s}_dev.csv")
        tasks.append(LocalTask(f"mmlu_{s}", f"tokenseek_mmlu_{s}", "acc", 5, "test", dev_source, files, max_shots=5))
    return {t.name: t for t in tasks}


CATALOG = _catalog()
ALIASES = {"hendrycks_ethics": "ethics", "paper": "paper"}


def local_names() -> list[str]:
    """The names to show users (subtasks folded into their group)."""
    return [n for n in CATALOG if not n.startswith(("mmlu_", "ethics_"))] + ["ethics_<subset>", "mmlu_<subject>"]


def expand_task_list(text: str | list[str] | None) -> list[str]:
    """Split ``a,b,c`` and expand ``paper`` to the five paper tasks, keeping order, no repeats."""
    items = text if isinstance(text, list) else (text or ",".join(DEFAULT_TASKS)).split(",")
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        for name in PAPER_TASKS if item == "paper" else (item,):
            if name not in out:
                out.append(name)
    if not out:
        raise TokenSeekError("--tasks is empty: give a comma-separated list, e.g. --tasks arc_challenge,hellaswag")
    return out


def lookup(name: str) -> LocalTask | None:
    """The local task for a user-typed name (paper/lm-eval name or our tokenseek_* name)."""
    key = name.removeprefix("tokenseek_")
    key = ALIASES.get(key, key)
    return CATALOG.get(key)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``--data-dir``, else ``$TOKENSEEK_EVAL_DATA``, else ``../shared/data/eval`` if it exists."""
    chosen = data_dir or os.environ.get(DATA_ENV)
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            source = "--data-dir" if data_dir else f"${DATA_ENV}"
            raise TokenSeekError(f"{source} {chosen} is not a directory: point it to the folder holding arc/, hellaswag/, mmlu/, ...")
        return path
    if DEFAULT_DATA_DIR.is_dir():
        return DEFAULT_DATA_DIR.resolve()
    raise TokenSeekError(
        f"no benchmark data: pass --data-dir DIR or set ${DATA_ENV} (the Hugging Face Hub is unreachable, "
        f"and the default {DEFAULT_DATA_DIR} does not exist under {Path.cwd()})"
    )


def check_files(task: LocalTask, data_dir: Path) -> None:
    missing = [f for f in task.files if not (data_dir / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise TokenSeekError(
            f"task {task.name} needs {data_dir / missing[0]}{more}, which is missing: "
            f"fix --data-dir / ${DATA_ENV} or drop {task.name} from --tasks"
        )
