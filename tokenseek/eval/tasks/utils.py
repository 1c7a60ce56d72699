"""Loaders and prompt helpers for the local copies of the paper's benchmarks.

lm-eval calls each ``load_*`` function as the task's ``custom_dataset`` with the
task's metadata plus ``dataset_kwargs`` as keyword arguments. The data directory
comes from the ``tokenseek_data_dir`` metadata key (``tokenseek eval`` passes it through
``TaskManager(metadata=...)``), else from ``$TOKENSEEK_EVAL_DATA``, else
``../shared/data/eval`` relative to the working directory. So the same YAMLs also
work with the plain ``lm_eval`` CLI:
``lm_eval --include_path tokenseek/eval/tasks --tasks tokenseek_arc_challenge
--metadata '{"tokenseek_data_dir": "/path/to/eval"}'``.

Rows are read with the standard library and turned into ``datasets.Dataset``
objects with every text field kept as a string: ``datasets``' CSV reader would
turn MMLU answer options such as "None" or "1.50" into NaN / 1.5.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from pathlib import Path

import numpy as np

DATA_ENV = "TOKENSEEK_EVAL_DATA"
DEFAULT_RELATIVE = Path("..") / "shared" / "data" / "eval"


def data_dir(tokenseek_data_dir: str | None = None, **_ignored) -> Path:
    """The benchmark data directory (see the module docstring for the order)."""
    chosen = tokenseek_data_dir or os.environ.get(DATA_ENV) or DEFAULT_RELATIVE
    return Path(chosen).expanduser().resolve()


def _file(relative: str, **meta) -> Path:
    path = data_dir(**meta) / relative
    if not path.is_file():
        # A plain exception: tokenseek checks the files before lm-eval runs and
        # reports a one-line error; this message is for direct lm_eval use.
        raise FileNotFoundError(
            f"benchmark file not found: {path} (set --data-dir / ${DATA_ENV} to the folder holding arc/, hellaswag/, ...)"
        )
    return path


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dataset(splits: dict[str, list[dict]]):
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# --------------------------------------------------------------------------- ARC
def load_arc(subset: str = "arc_challenge", **meta):
    """``{query: "Question: ...", choices[4], gold}`` (llm-foundry's local copy of ARC test)."""
    return _dataset({"test": _jsonl(_file(f"arc/{subset}.jsonl", **meta))})


# --------------------------------------------------------------------- HellaSwag
# The trailing lower-case fragment after the last full stop: ActivityNet items' ctx_b.
_CTX_B = re.compile(r"^(.*\. )([a-z][^.]*)$")


def load_hellaswag(**meta):
    """``{ctx, endings[4], label}`` with ``query``: lm-eval's HellaSwag prompt.

    The local file is already cleaned like lm-eval's ``hellaswag/utils.py`` cleans
    it, but joins ``ctx_a + " " + ctx_b`` without lm-eval's ``ctx_b.capitalize()``
    ("... on a roof. he" instead of "... on a roof. He"). The Hub rows' ctx_b is
    the lower-case fragment after the last full stop (ActivityNet items, about a
    third), so capitalising that fragment restores lm-eval's prompt.
    """
    rows = _jsonl(_file("hellaswag/hellaswag_val.jsonl", **meta))
    for row in rows:
        row["label"] = int(row["label"])
        match = _CTX_B.match(row["ctx"])
        row["query"] = match.group(1) + match.group(2).capitalize() if match else row["ctx"]
    return _dataset({"validation": rows})


# -------------------------------------------------------------------- TruthfulQA
def load_truthfulqa(**meta):
    """Turn the original ``{answer: 0/1}`` maps into lm-eval's ``{choices, labels}`` lists.

    The original JSON keeps the Hub dataset's answer order (true answers first);
    json.load preserves it.
    """
    with open(_file("truthfulqa/mc_task.json", **meta), encoding="utf-8") as f:
        items = json.load(f)
    rows = []
    for item in items:
        row = {"question": item["question"]}
        for key in ("mc1_targets", "mc2_targets"):
            row[key] = {"choices": list(item[key]), "labels": [int(v) for v in item[key].values()]}
        rows.append(row)
    return _dataset({"validation": rows})


def process_results_mc2(doc, results):
    """MC2: normalised probability mass on the true answers (copied from lm-eval's
    ``truthfulqa/utils.py``, whose module imports sacrebleu and rouge_score at the top)."""
    ll, _ = zip(*results)
    probs = np.exp(np.array(ll))
    probs_norm = probs / np.sum(probs)
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(np.sum(probs_norm[labels == 1]))}


# -------------------------------------------------------------------- WinoGrande
def load_winogrande(**meta):
    """``{context_options[2], continuation, gold}`` (WinoGrande dev, partial scoring)."""
    return _dataset({"validation": _jsonl(_file("winogrande/winogrande.jsonl", **meta))})


# Partial scoring as in lm-eval's winogrande: the two candidate contexts are the
# "choices", the shared continuation is the target, and only its log-likelihood counts.
def winogrande_doc_to_text(doc):
    return int(doc["gold"])


def winogrande_doc_to_choice(doc):
    return list(doc["context_options"])


def winogrande_doc_to_target(doc):
    return doc["continuation"]


# ------------------------------------------------------------------------ ETHICS
def _csv_rows(path: Path, header: bool = True) -> list[dict] | list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f)) if header else list(csv.reader(f))


def load_ethics(subset: str, **meta):
    """The original ETHICS test CSVs, in the columns of the Hub copy lm-eval reads
    (EleutherAI/hendrycks_ethics), so its prompts apply unchanged."""
    files = {
        "commonsense": "ethics/commonsense/cm_test.csv",
        "deontology": "ethics/deontology/deontology_test.csv",
        "justice": "ethics/justice/justice_test.csv",
        "utilitarianism": "ethics/utilitarianism/util_test.csv",
        "virtue": "ethics/virtue/virtue_test.csv",
    }
    path = _file(files[subset], **meta)
    if subset == "utilitarianism":
        # No header: each row is (more pleasant scenario, less pleasant scenario).
        rows = [{"activity": a, "baseline": b, "rating": ""} for a, b in _csv_rows(path, header=False)]
    elif subset == "virtue":
        rows = []
        for row in _csv_rows(path):
            scenario, trait = row["scenario"].split(" [SEP] ")
            rows.append({"label": int(row["label"]), "scenario": scenario, "trait": trait})
    elif subset == "commonsense":
        rows = [{"label": int(r["label"]), "input": r["input"], "is_short": r["is_short"] == "True", "edited": r["edited"] == "True"} for r in _csv_rows(path)]
    else:
        keep = ("scenario", "excuse") if subset == "deontology" else ("scenario",)
        rows = [{"label": int(r["label"]), **{k: r[k] for k in keep}} for r in _csv_rows(path)]
    return _dataset({"test": rows})


# Same as lm-eval's hendrycks_ethics/utils.py: a per-item seeded shuffle decides
# which scenario is shown first, and the answer is whether Scenario 1 is preferable.
def _utilitarianism_preproc(doc):
    rnd = random.Random(doc["activity"])
    scenarios = [doc["activity"], doc["baseline"]]
    ordering = [0, 1]
    rnd.shuffle(ordering)
    return {"scenarios": [scenarios[ordering[0]], scenarios[ordering[1]]], "label": int(ordering.index(0) == 0)}


def utilitarianism_doc_to_text(doc) -> str:
    doc = _utilitarianism_preproc(doc)
    return f"Scenario 1: {doc['scenarios'][0]}\nScenario 2: {doc['scenarios'][1]}\nQuestion: Is Scenario 1 preferable?\nAnswer:"


def utilitarianism_doc_to_target(doc):
    return _utilitarianism_preproc(doc)["label"]


# -------------------------------------------------------------------------- MMLU
def load_mmlu(subject: str, **meta):
    """One subject's test and dev CSVs (``question,choice0..choice3,answer``) as
    cais/mmlu rows ``{question, subject, choices[4], answer}``; dev holds the 5
    canonical few-shot examples."""
    splits = {}
    for split in ("test", "dev"):
        rows = []
        for r in _csv_rows(_file(f"mmlu/{split}/{subject}_{split}.csv", **meta)):
            rows.append(
                {
                    "question": r["question"],
                    "subject": subject,
                    "choices": [r[f"choice{i}"] for i in range(4)],
                    "answer": int(r["answer"]),
                }
            )
        splits[split] = rows
    return _dataset(splits)
