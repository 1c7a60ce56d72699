"""Run benchmarks in-process with lm-evaluation-harness and summarise what was measured.

All scoring is lm-eval's (``simple_evaluate`` with ``HFLM``, by default its subclass
``tokenseek-prefix`` from :mod:`tokenseek.eval.prefix_lm`, which runs each shared
few-shot context once and gives the same log-likelihoods); this module only picks
the tasks, limits the items, sets the shots and collects a small result record
per task: the paper's metric, its stderr, items scored, shots used, requests sent
and where the few-shot examples came from.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from tokenseek.errors import TokenSeekError, first_line
from tokenseek.eval.catalog import TASKS_DIR, LocalTask, check_files, expand_task_list, local_names, lookup, resolve_data_dir

logger = logging.getLogger(__name__)

# lm-eval models evaluate_tasks can use: the shared-context one (default) and plain HFLM.
LM_EVAL_MODELS = ("tokenseek-prefix", "hf")


@dataclass
class TaskSelection:
    """Tasks checked and loaded before any model is: bad names or files fail fast."""

    plans: list[dict]
    manager: object  # lm_eval TaskManager
    data_dir: str | None
    limit: int | None

    @property
    def objects(self) -> list:
        """What ``simple_evaluate`` gets: each task or group, a tag's tasks one by one."""
        out = []
        for plan in self.plans:
            obj = plan["object"]
            out.extend(obj if isinstance(obj, list) else [obj])
        return out

    @property
    def samples(self) -> dict[str, list[int]] | None:
        """lm-eval's ``samples``: the first k items of each limited (sub)task."""
        if not self.limit:
            return None
        return {t: list(range(k)) for plan in self.plans for t, k in plan["items"].items()}


def select_tasks(
    tasks: str | list[str] | None = None,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | dict[str, int] | None = None,
    include_path: list[str] | None = None,
    hub: bool = False,
    verbose: bool = False,
) -> TaskSelection:
    """Resolve names, check the data files, load the lm-eval tasks and fix shots and item counts.

    ``limit`` caps the items per requested task; a group (ETHICS, MMLU) spreads it
    over its subtasks, ``ceil(limit / subtasks)`` each, so every subtask counts.
    ``num_fewshot``: an int applies to every task that is not 0-shot by design
    (lm-eval's rule); a ``{task: shots}`` dict sets exactly the tasks named.
    ``hub=True`` sends the paper names to lm-eval's own (Hub) task definitions.
    """
    names = expand_task_list(tasks)
    if limit is not None and limit < 1:
        raise TokenSeekError(f"--limit must be at least 1, got {limit}")
    shots_by_name = _shots_by_name(names, num_fewshot)
    for p in include_path or []:
        if not Path(p).is_dir():
            raise TokenSeekError(f"--include-path {p} is not a folder: give a folder of lm-eval task YAMLs")

    paper = {n: lookup(n) for n in names}  # the paper's settings, whichever data is used
    local = {n: (None if hub else paper[n]) for n in names}
    meta = {}
    if any(local.values()):
        root = resolve_data_dir(data_dir)
        for task in filter(None, local.values()):
            check_files(task, root)
        meta["tokenseek_data_dir"] = str(root)

    with _quiet_lm_eval(verbose):
        from lm_eval.tasks import TaskManager

        paths = [str(TASKS_DIR)] + [str(p) for p in include_path or []]
        # Indexing lm-eval's ~14k built-in YAMLs takes ~10 s: only do it when a
        # name has to be passed through to lm-eval.
        builtin = hub or not all(local.values())
        manager = TaskManager(include_path=paths, include_defaults=builtin, metadata=meta)
        plans = [_plan(name, paper[name], hub, manager, shots_by_name.get(name), num_fewshot, limit) for name in names]
    return TaskSelection(plans, manager, meta.get("tokenseek_data_dir"), limit)


def evaluate_tasks(
    model,
    tokenizer,
    tasks: str | list[str] | TaskSelection | None = None,
    *,
    batch_size: int = 8,
    lm_eval_model: str = "tokenseek-prefix",
    log_samples: bool = False,
    verbose: bool = False,
    **select_kwargs,
) -> dict:
    """Evaluate ``model`` on ``tasks`` and return ``{"tasks": {name: record}, ...}``.

    ``tasks`` is a name list (``select_kwargs`` as for :func:`select_tasks`) or a
    :class:`TaskSelection` made earlier. ``lm_eval_model``: ``"tokenseek-prefix"``
    (each shared context computed once) or ``"hf"`` (lm-eval's plain ``HFLM``).
    ``log_samples``: also return lm-eval's per-item samples (``"lm_eval_samples"``,
    with each request's raw ``resps``), e.g. to compare two models request by request.
    """
    if lm_eval_model not in LM_EVAL_MODELS:
        raise TokenSeekError(f"lm-eval model {lm_eval_model!r} is not one of {', '.join(LM_EVAL_MODELS)}")
    selection = tasks if isinstance(tasks, TaskSelection) else select_tasks(tasks, verbose=verbose, **select_kwargs)
    with _quiet_lm_eval(verbose):
        from lm_eval import simple_evaluate

        lm = make_lm(model, tokenizer, batch_size=batch_size, lm_eval_model=lm_eval_model)
        started = time.time()
        try:
            out = simple_evaluate(
                model=lm,
                tasks=selection.objects,
                task_manager=selection.manager,
                samples=selection.samples,
                log_samples=log_samples,
            )
        except TokenSeekError:
            raise
        except Exception as exc:  # lm-eval raises many types; keep its first line
            raise TokenSeekError(f"lm-eval failed: {first_line(exc)} (rerun with -v for the traceback)") from exc
        wall = time.time() - started

    result = {
        "tasks": {plan["name"]: _record(plan, out) for plan in selection.plans},
        "data_dir": selection.data_dir,
        "limit": selection.limit,
        "batch_size": batch_size,
        "lm_eval_model": lm_eval_model,
        "lm_eval_version": _lm_eval_version(),
        "eval_wall_time_s": round(wall, 2),
    }
    if log_samples:
        result["lm_eval_samples"] = out.get("samples", {})
    return result


def make_lm(model, tokenizer, *, batch_size: int = 8, lm_eval_model: str = "tokenseek-prefix", **kwargs):
    """The lm-eval model object for an already loaded ``model`` (``kwargs`` go to ``HFLM``)."""
    if lm_eval_model == "hf":
        from lm_eval.models.huggingface import HFLM as cls
    else:
        from tokenseek.eval.prefix_lm import PrefixCachedLM as cls
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device), **kwargs)


# ----------------------------------------------------------------------------- planning
def _shots_by_name(names: list[str], num_fewshot) -> dict[str, int]:
    if not isinstance(num_fewshot, dict):
        return {}
    unknown = sorted(set(num_fewshot) - set(names))
    if unknown:
        raise TokenSeekError(f"--num-fewshot names {', '.join(unknown)}, which is not in --tasks ({', '.join(names)})")
    return dict(num_fewshot)


def _plan(name: str, paper: LocalTask | None, hub: bool, manager, exact_shots: int | None, num_fewshot, limit: int | None) -> dict:
    """Load one requested task (or group) and fix its shots and item counts.

    ``paper`` is the catalog entry for a paper task: its metric and default shots
    apply to our local task and, with ``hub``, to lm-eval's own one.
    """
    local = None if hub else paper
    lm_name = local.lm_eval_name if local else (paper.hub_task if paper else name)
    if not local and lm_name not in manager.all_tasks:
        raise TokenSeekError(
            f"unknown task {name!r}: available here are {', '.join(local_names())} "
            "(or any lm-eval task name when the Hugging Face Hub is reachable; see `lm_eval ls tasks`)"
        )
    try:
        loaded = manager.load([lm_name])
    except TokenSeekError:
        raise
    except Exception as exc:  # a Hub task without network, a broken user YAML, ...
        hint = "" if local else ": the Hugging Face Hub may be unreachable, use the local tasks instead"
        raise TokenSeekError(f"could not load task {name!r} ({first_line(exc)}){hint}") from exc
    groups, leaves = loaded["groups"], loaded["tasks"]
    obj = groups.get(lm_name) or (leaves[lm_name] if lm_name in leaves else None)
    if obj is None:  # a tag: several tasks, no aggregate
        obj = list(leaves.values())

    shots = {}
    for leaf_name, task in leaves.items():
        default = paper.shots if paper else (task.get_config("num_fewshot") or 0)
        if exact_shots is not None:
            n = exact_shots
        elif isinstance(num_fewshot, int) and default != 0:
            n = num_fewshot  # lm-eval's rule: a global value leaves 0-shot-by-design tasks alone
        else:
            n = default
        if n < 0:
            raise TokenSeekError(f"--num-fewshot for {name} must be >= 0, got {n}")
        if paper and paper.max_shots is not None and n > paper.max_shots:
            raise TokenSeekError(f"{name} has only {paper.max_shots} few-shot examples per subject (its dev split): use --num-fewshot {name}={paper.max_shots} or fewer")
        task.set_config(key="num_fewshot", value=n)
        shots[leaf_name] = n

    items = {}
    if limit:
        per_leaf = math.ceil(limit / len(leaves))
        items = {leaf_name: min(per_leaf, len(task.eval_docs)) for leaf_name, task in leaves.items()}
    return {"name": name, "lm_eval_name": lm_name, "local": local, "paper": paper, "object": obj, "leaves": leaves, "is_group": lm_name in groups, "shots": shots, "items": items}


# ----------------------------------------------------------------------------- results
def _record(plan: dict, out: dict) -> dict:
    local: LocalTask | None = plan["local"]
    results = out["results"]
    lm_name = plan["lm_eval_name"]
    leaves = plan["leaves"]
    paper: LocalTask | None = plan["paper"]
    metric = paper.metric if paper else _first_metric(results.get(lm_name) or results[next(iter(leaves))])
    head = results.get(lm_name, {})
    value, stderr = head.get(f"{metric},none"), head.get(f"{metric}_stderr,none")
    n_samples = out.get("n-samples", {})
    items = sum(n_samples.get(leaf, {}).get("effective", 0) for leaf in leaves)
    record = {
        "task": plan["name"],
        "lm_eval_task": lm_name,
        "metric": metric,
        "value": _num(value),
        "stderr": _num(stderr),
        "items": items,
        "requests": sum(len(t.instances) for t in leaves.values()),
        "shots": _collapse(plan["shots"]),
        "fewshot_source": (local.fewshot_source if local else "lm-eval's fewshot split for the task") if any(plan["shots"].values()) else "none (0-shot)",
        "split": local.split if local else None,
        "source": "local files" if local else "lm-eval (Hugging Face Hub)",
    }
    if plan["is_group"] or len(leaves) > 1:
        record["subtasks"] = {
            leaf.removeprefix("tokenseek_"): {
                "value": _num(results.get(leaf, {}).get(f"{metric},none")),
                "stderr": _num(results.get(leaf, {}).get(f"{metric}_stderr,none")),
                "items": n_samples.get(leaf, {}).get("effective", 0),
                "shots": plan["shots"][leaf],
            }
            for leaf in leaves
        }
        if value is None and not plan["is_group"]:  # a tag: no aggregate from lm-eval
            vals = [s["value"] for s in record["subtasks"].values() if s["value"] is not None]
            record["value"] = sum(vals) / len(vals) if vals else None
        if record["stderr"] is None and metric in ("acc", "acc_norm"):
            record["stderr"] = _pooled_binary_stderr(record)
    return record


def _pooled_binary_stderr(record: dict) -> float | None:
    """lm-eval gives a group no stderr when a subtask has a single item (MMLU at a
    small --limit). For a 0/1 metric micro-averaged over all items (MMLU) the items
    are known from the subtask means, so the stderr is lm-eval's mean_stderr of
    those items: sqrt(p(1-p)/(n-1)). Other averages (ETHICS' unweighted mean) keep None."""
    subs = [s for s in record["subtasks"].values() if s["value"] is not None and s["items"]]
    n = sum(s["items"] for s in subs)
    if n < 2 or record["value"] is None:
        return None
    pooled = sum(s["value"] * s["items"] for s in subs) / n
    if not math.isclose(pooled, record["value"], abs_tol=1e-9):
        return None
    return math.sqrt(pooled * (1 - pooled) / (n - 1))


def _first_metric(row: dict) -> str:
    for key in row:
        if key.endswith(",none") and "_stderr" not in key:
            return key.split(",")[0]
    raise TokenSeekError(f"lm-eval returned no metric in {sorted(row)}")


def _collapse(shots: dict[str, int]):
    values = set(shots.values())
    return values.pop() if len(values) == 1 else shots


def _num(value):
    """lm-eval writes "N/A" where a stderr cannot be computed (one item)."""
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


@contextlib.contextmanager
def _quiet_lm_eval(verbose: bool):
    """lm-eval logs a warning per task (custom datasets, model passed as object); hide them unless -v."""
    log = logging.getLogger("lm_eval")
    old = log.level
    if not verbose:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)
