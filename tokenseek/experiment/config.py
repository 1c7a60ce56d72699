"""Study configs: parse and validate one YAML file, expand its grid into named cells.

A study file looks like this (every key but ``study``, ``data`` and ``cells`` is optional)::

    study: main                    # results go to experiments/results/<study>/
    title: Main table (Tab. 1 analogue)
    description: free text, copied into the report
    data:
      path: ../shared/data/train/alpaca_5000.json
      sample: 1000                 # training records, drawn at random (seed) from path
      heldout: 300                 # further records, disjoint from the training sample
      seed: 0                      # the sampling seed
    # or generated data instead of a file (the held-out records are the generator's test split):
    # data: {generator: shortanswer, train: 2000, test: 500, seed: 0}
    defaults: {max_length: 384, grad_accum: 16, lr: 4.0e-4}   # TrainConfig fields for every cell
    scoring: {grad_layer: 1}       # defaults of the scoring keys for every cell
    eval: {heldout: true, tasks: [arc_challenge], limit: 20}   # exact_match: true for generated short answers
    report: {path: docs/RESULTS.md, reference: "LoRA, full-token", comparisons: [...]}
    order: seed                    # run cells seed by seed (a partial run has paired seeds); default: as listed
    cells:
      - name: base                 # a cell that is not trained: the base model is evaluated
        label: Base model
        train: false
      - name: "lora-{selection}{pct}-s{seed}"   # a template over the cell's parameters
        label: "LoRA, {selection} {pct}%"       # cells with one label are one table row (seeds)
        peft: lora
        selection: random
        grid: {ratio: [0.05, 0.1], seed: [0, 1, 2]}   # lists here expand to a cross product
        # "alpha,beta": [[1, 0], [1, 1]]  -> one axis of paired values

Cell names and labels are ``str.format`` templates over the cell's parameters plus
``pct`` (the ratio in percent) and ``ab`` ("1,0" for alpha 1, beta 0). Names must come
out unique: they are the cell's identity (its result file and run directory).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenseek.errors import TokenSeekError, first_line

# Set by the runner for every cell, never by a config.
RUNNER_KEYS = {"output_dir", "data", "fields", "limit", "heldout", "scores", "overwrite", "memory_budget"}
# Per-cell keys that are not TrainConfig fields.
def _scoring_keys() -> dict:
    from tokenseek.seeking.config import ScoreConfig

    score = ScoreConfig()
    return {"grad_layer": score.grad_layer, "grad_mode": score.grad_mode, "score_batch_size": score.batch_size}


SCORING_KEYS = _scoring_keys()


def _eval_batch_size() -> int:
    from tokenseek.eval.config import EvalConfig

    return EvalConfig().batch_size  # ScoreConfig's defaults, under the names a study cell uses
CELL_META_KEYS = {"name", "label", "grid", "train"}
EVAL_KEYS = {
    "heldout": True,  # held-out loss on the study's held-out records
    "heldout_limit": None,  # only the first N held-out records
    "batch_size": _eval_batch_size(),  # tokenseek eval's default
    "tasks": [],  # lm-eval tasks (names as `tokenseek eval --tasks`)
    "limit": None,  # lm-eval items per task
    "num_fewshot": None,
    "data_dir": None,  # benchmark files (default: $TOKENSEEK_EVAL_DATA or ../shared/data/eval)
    "exact_match": False,  # accuracy of greedy answers on the held-out records (generated short answers)
    "exact_match_limit": None,  # only the first N held-out records
    "exact_match_max_new_tokens": 40,
}
# Added after results were first recorded: a result written without them is current as long as
# exact match stays off (see eval_identity).
_EXACT_MATCH_KEYS = ("exact_match", "exact_match_limit", "exact_match_max_new_tokens")
REPORT_KEYS = {"path": "docs/RESULTS.md", "reference": None, "comparisons": [], "spreads": [], "figure": True, "notes": None}
TOP_KEYS = {"study", "title", "description", "data", "defaults", "scoring", "eval", "report", "cells", "runs_dir", "results_dir", "order"}
DATA_KEYS = {"path", "sample", "heldout", "seed", "fields"}  # records sampled from a file
GENERATED_DATA_KEYS = {"generator", "train", "test", "seed"}  # records from tokenseek.data.generators
ORDERS = ("config", "seed")
# What each report metric reads from a result; lower-is-better decides "beats" and "matches".
METRICS = {"heldout": {"eval": "heldout", "lower_is_better": True}, "exact_match": {"eval": "exact_match", "lower_is_better": False}}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
COMPARISON_KINDS = ("matches", "beats", "lower_seed_variance")


def train_defaults() -> dict:
    """TrainConfig's defaults for the fields a config may set."""
    from tokenseek.train.config import TrainConfig
    from tokenseek.utils.options import defaults

    return {k: v for k, v in defaults(TrainConfig).items() if k not in RUNNER_KEYS}


def effective(params: dict) -> dict:
    """A cell's parameters with TrainConfig's defaults filled in (for display, not identity)."""
    from tokenseek.seeking.select import score_weights

    p = {**train_defaults(), **params}
    p["alpha"], p["beta"] = score_weights(p["select_from"], p["alpha"], p["beta"])
    return p


def train_fields() -> set[str]:
    from tokenseek.train.config import TrainConfig

    return TrainConfig.field_names() - RUNNER_KEYS


@dataclass
class Cell:
    name: str
    label: str
    params: dict  # TrainConfig fields (without runner keys) + scoring keys
    train: bool = True
    group: int = 0  # index of the `cells:` entry it came from

    @property
    def quantize(self) -> str | None:
        """How the base model is loaded for this cell: NF4 for QLoRA cells, else as stored."""
        return "nf4" if self.params.get("peft") == "qlora" else None

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def scoring(self) -> dict | None:
        """The scoring setting this cell needs a store for, or None (unscored selection / not trained)."""
        from tokenseek.seeking.select import SCORED

        if not self.train or self.params.get("selection") not in SCORED or self.params.get("seeking") == "online":
            return None
        params = effective(self.params)
        return {
            "model": params["model"],
            "template": params["template"],
            "max_length": params["max_length"],
            "train_on_prompt": bool(params["train_on_prompt"]),
            "quantize": self.quantize,
            "grad_layer": int(self.params["grad_layer"]),
            "grad_mode": self.params["grad_mode"],
            "batch_size": int(self.params["score_batch_size"]),
        }

    def identity(self) -> dict:
        """What the result file records as this cell's configuration (compared on skip)."""
        return {"name": self.name, "label": self.label, "train": self.train, "params": self.params}


@dataclass
class Study:
    path: Path
    study: str
    title: str
    description: str
    data: dict
    defaults: dict
    eval: dict
    report: dict
    runs_dir: Path
    results_dir: Path
    cells: list[Cell] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(name)

    def labels(self) -> list[str]:
        """Row labels in config order."""
        seen: list[str] = []
        for c in self.cells:
            if c.label not in seen:
                seen.append(c.label)
        return seen

    def select(self, patterns: list[str] | None) -> list[Cell]:
        """Cells matching any of ``patterns`` (exact names or shell globs), in config order."""
        import fnmatch

        if not patterns:
            return list(self.cells)
        chosen = []
        for pattern in patterns:
            hits = [c for c in self.cells if fnmatch.fnmatchcase(c.name, pattern)]
            if not hits:
                names = ", ".join(c.name for c in self.cells)
                raise TokenSeekError(f"--only {pattern!r} matches no cell of study {self.study!r}; its cells are: {names}")
            chosen.extend(h for h in hits if h not in chosen)
        return [c for c in self.cells if c in chosen]

    def data_spec(self) -> dict:
        return dict(self.data)


def _fail(path: Path, message: str) -> TokenSeekError:
    return TokenSeekError(f"{path}: {message}")


def load_study(path: str | Path) -> Study:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TokenSeekError(f"experiment config not found: {path} (give a study YAML, e.g. experiments/alpaca.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TokenSeekError(f"{path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping with at least study, data and cells")
    return parse_study(raw, path)


def parse_study(raw: dict, path: Path = Path("<config>")) -> Study:
    """A checked :class:`Study` from a study YAML's mapping; every mistake is a one-line error naming ``path``."""
    raw = copy.deepcopy(raw)
    study = _study_name(path, raw)
    data = _data_section(path, raw["data"])
    base_params = _base_params(path, raw)
    eval_cfg = _eval_section(path, raw, data)
    cells = _cells(path, raw, base_params)
    report = _section(path, "report", raw.get("report") or {}, REPORT_KEYS)
    _check_report(path, report, cells, eval_cfg)
    # Shared by all studies by default: a cell whose settings another study already ran is not rerun.
    runs_dir = Path(raw.get("runs_dir") or "runs/experiments")
    results_dir = Path(raw.get("results_dir") or f"experiments/results/{study}")
    return Study(
        path=path,
        study=study,
        title=str(raw.get("title") or study),
        description=str(raw.get("description") or "").strip(),
        data=data,
        defaults=base_params,
        eval=eval_cfg,
        report=report,
        runs_dir=runs_dir,
        results_dir=results_dir,
        cells=cells,
        raw=raw,
    )


def _study_name(path: Path, raw: dict) -> str:
    """The top-level keys are known and complete; the study's name is usable in paths."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(TOP_KEYS))})")
    for key in ("study", "data", "cells"):
        if key not in raw:
            raise _fail(path, f"missing required key {key!r}")
    study = str(raw["study"])
    if not _NAME.match(study):
        raise _fail(path, f"study name {study!r} must be letters, digits, '.', '_' or '-'")
    return study


def _base_params(path: Path, raw: dict) -> dict:
    """What every cell starts from: the scoring defaults, then ``scoring:``, then ``defaults:``."""
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise _fail(path, "defaults must be a mapping of TrainConfig field: value")
    scoring = raw.get("scoring") or {}
    if not isinstance(scoring, dict) or set(scoring) - set(SCORING_KEYS):
        raise _fail(path, f"scoring may only set {', '.join(SCORING_KEYS)}")
    _check_params(path, "defaults", defaults, train_fields() | set(SCORING_KEYS))
    return {**SCORING_KEYS, **scoring, **defaults}


def _eval_section(path: Path, raw: dict, data: dict) -> dict:
    """``eval:`` with its defaults; something is evaluated, on records the data section holds out."""
    eval_cfg = _section(path, "eval", raw.get("eval") or {}, EVAL_KEYS)
    if isinstance(eval_cfg["tasks"], str):
        eval_cfg["tasks"] = [t for t in eval_cfg["tasks"].split(",") if t.strip()]
    held_records = data["test"] if "generator" in data else data["heldout"]
    held_key = "data.test" if "generator" in data else "data.heldout"
    for key in ("heldout", "exact_match"):
        if eval_cfg[key] and not held_records:
            raise _fail(path, f"eval.{key} is on but {held_key} is 0: hold out some records, or set eval.{key}: false")
    if not eval_cfg["heldout"] and not eval_cfg["exact_match"] and not eval_cfg["tasks"]:
        raise _fail(path, "nothing to evaluate: set eval.heldout: true, eval.exact_match: true and/or eval.tasks")
    max_new = eval_cfg["exact_match_max_new_tokens"]
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
        raise _fail(path, f"eval.exact_match_max_new_tokens must be a whole number >= 1, got {max_new!r}")
    return eval_cfg


def _cells(path: Path, raw: dict, base_params: dict) -> list[Cell]:
    """Every cell of ``cells:`` (grids expanded), in run order, uniquely named and each a valid run."""
    order = raw.get("order") or "config"
    if order not in ORDERS:
        raise _fail(path, f"order must be one of {', '.join(ORDERS)} (seed: run seed 0 of every row first), got {order!r}")
    cells_raw = raw["cells"]
    if not isinstance(cells_raw, list) or not cells_raw:
        raise _fail(path, "cells must be a non-empty list")
    allowed_params = train_fields() | set(SCORING_KEYS)
    cells: list[Cell] = []
    for group, entry in enumerate(cells_raw):
        cells.extend(_expand(path, group, entry, base_params, allowed_params))
    if order == "seed":
        # Stable: within a seed the rows keep their listed order (and the report its row order).
        cells.sort(key=lambda c: c.seed if c.train else -1)
    names = [c.name for c in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(path, f"cell names must be unique, these repeat: {', '.join(dupes)} (add the varying keys to the name template)")
    for c in cells:
        _validate_cell(path, c)
    return cells


def _check_report(path: Path, report: dict, cells: list[Cell], eval_cfg: dict) -> None:
    """The report names existing rows and compares them on metrics the study evaluates."""
    labels = {c.label for c in cells}
    for ref in [report["reference"]] + [x for comp in report["comparisons"] for x in (comp.get("a"), comp.get("b"))] + [
        lab for s in report["spreads"] for lab in s.get("labels", [])
    ]:
        if ref is not None and ref not in labels:
            raise _fail(path, f"report names the row {ref!r}, but no cell has that label (labels: {'; '.join(sorted(labels))})")
    for entry in report["comparisons"] + report["spreads"]:
        metric = entry.get("metric", "heldout")
        if metric not in METRICS:
            raise _fail(path, f"report metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if not eval_cfg[METRICS[metric]["eval"]]:
            raise _fail(path, f"report compares on {metric}, but eval.{METRICS[metric]['eval']} is off: turn it on or drop the comparison")
    for comp in report["comparisons"]:
        if comp.get("kind", "matches") not in COMPARISON_KINDS:
            raise _fail(path, f"report.comparisons kind must be one of {', '.join(COMPARISON_KINDS)}, got {comp.get('kind')!r}")
        if not comp.get("a") or not comp.get("b"):
            raise _fail(path, "each report.comparisons entry needs a and b (row labels)")


def _whole(path: Path, key: str, value, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(path, f"data.{key} must be a whole number >= {minimum}, got {value!r}")


def _data_section(path: Path, value) -> dict:
    """The data spec: a file sample (path, sample, heldout, seed, fields) or a generator
    (generator, train, test, seed). Each form keeps exactly its own keys, so the spec — which
    names the sampled data, the score stores and the run folders — of a file study is what it
    was before generators existed."""
    if not isinstance(value, dict):
        raise _fail(path, "data must be a mapping")
    if "generator" in value:
        from tokenseek.data.generators import GENERATORS

        extra = sorted(set(value) - GENERATED_DATA_KEYS)
        if extra:
            raise _fail(path, f"data.generator replaces {', '.join(extra)}: give generator, train, test and seed only")
        if value["generator"] not in GENERATORS:
            raise _fail(path, f"unknown data.generator {value['generator']!r}: choose one of {', '.join(sorted(GENERATORS))}")
        data = {"generator": value["generator"], "train": value.get("train"), "test": value.get("test") or 0, "seed": int(value.get("seed") or 0)}
        _whole(path, "train", data["train"], 1)
        _whole(path, "test", data["test"])
        return data
    data = _section(path, "data", value, {k: None for k in DATA_KEYS})
    if not data["path"]:
        raise _fail(path, "data.path is required (a .json/.jsonl/.csv/.parquet file), or data.generator (e.g. shortanswer)")
    data["seed"] = int(data["seed"] or 0)
    for key in ("sample", "heldout"):
        if data[key] is not None:
            _whole(path, key, data[key])
    data["heldout"] = data["heldout"] or 0
    return data


def eval_identity(ev: dict | None) -> dict | None:
    """The eval settings a result is current for: exact-match keys only while it is on, so
    results recorded before it existed stay current."""
    if ev is None:
        return None
    if ev.get("exact_match"):
        return dict(ev)
    return {k: v for k, v in ev.items() if k not in _EXACT_MATCH_KEYS}


def _section(path: Path, name: str, value, defaults: dict) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"{name} must be a mapping")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise _fail(path, f"unknown {name} key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(defaults))})")
    return {**copy.deepcopy(defaults), **value}


def _check_params(path: Path, where: str, params: dict, allowed: set[str]) -> None:
    runner = sorted(set(params) & RUNNER_KEYS)
    if runner:
        raise _fail(path, f"{where}: {', '.join(runner)} are set by the experiment runner (use data: for the data)")
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise _fail(path, f"{where}: unknown key(s) {', '.join(unknown)} (TrainConfig fields or {', '.join(SCORING_KEYS)})")
    for key, value in params.items():
        if isinstance(value, (list, dict)):
            raise _fail(path, f"{where}: {key} is a list/mapping; put values to sweep under grid:")


def _expand(path: Path, group: int, entry, base: dict, allowed: set[str]) -> list[Cell]:
    if not isinstance(entry, dict):
        raise _fail(path, f"cells[{group}] must be a mapping")
    where = f"cells[{group}]"
    if "name" not in entry:
        raise _fail(path, f"{where} needs a name (a template such as 'lora-{{selection}}-s{{seed}}')")
    fixed = {k: v for k, v in entry.items() if k not in CELL_META_KEYS}
    _check_params(path, where, fixed, allowed)
    grid = entry.get("grid") or {}
    if not isinstance(grid, dict):
        raise _fail(path, f"{where}.grid must be a mapping of key: [values]")
    axes = []
    for axis, values in grid.items():
        keys = [k.strip() for k in str(axis).split(",")]
        bad = sorted(set(keys) - allowed)
        if bad:
            raise _fail(path, f"{where}.grid: unknown key(s) {', '.join(bad)}")
        if set(keys) & set(fixed):
            raise _fail(path, f"{where}: {', '.join(sorted(set(keys) & set(fixed)))} is both fixed and in grid")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"{where}.grid.{axis} must be a non-empty list")
        points = []
        for v in values:
            if len(keys) > 1:
                if not isinstance(v, (list, tuple)) or len(v) != len(keys):
                    raise _fail(path, f"{where}.grid.{axis}: each value must be a list of {len(keys)} ({', '.join(keys)})")
                points.append(dict(zip(keys, v)))
            else:
                points.append({keys[0]: v})
        axes.append(points)
    train = entry.get("train", True)
    if not isinstance(train, bool):
        raise _fail(path, f"{where}.train must be true or false")
    cells = []
    for combo in itertools.product(*axes) if axes else [()]:
        params = {**base, **fixed}
        for point in combo:
            params.update(point)
        params = _normalise(params)
        if not train:
            # A base-model cell: only what loading/evaluating it needs; `peft: qlora` evaluates the
            # NF4-quantised base, the starting point of the QLoRA cells.
            keep = ("model", "template", "max_length") + (("peft",) if params.get("peft") == "qlora" else ())
            params = {k: params[k] for k in keep if k in params}
        fmt = _format_values(params)
        try:
            name = str(entry["name"]).format(**fmt)
            label = str(entry.get("label") or entry["name"]).format(**fmt)
        except (KeyError, IndexError, ValueError) as exc:
            raise _fail(path, f"{where}: the name/label template {entry['name']!r} uses an unknown field {exc}") from None
        if not _NAME.match(name):
            raise _fail(path, f"{where}: cell name {name!r} must be letters, digits, '.', '_' or '-'")
        cells.append(Cell(name=name, label=label, params=params, train=train, group=group))
    return cells


def _normalise(params: dict) -> dict:
    """``alpha: 1`` and ``alpha: 1.0`` are one setting: ints become floats where TrainConfig's field is a float."""
    from tokenseek.train.config import TrainConfig
    from tokenseek.utils.options import value_type

    fields = TrainConfig.field_names()
    return {
        k: float(v) if k in fields and value_type(TrainConfig, k) is float and isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in params.items()
    }


def _format_values(params: dict) -> dict:
    out = dict(params)
    ratio = params.get("ratio")
    out["pct"] = f"{100 * ratio:g}" if isinstance(ratio, (int, float)) else ratio
    if "alpha" in params or "beta" in params:
        from tokenseek.seeking.select import DEFAULT_SELECT_FROM, score_weights

        out["ab"] = "{:g},{:g}".format(*score_weights(params.get("select_from", DEFAULT_SELECT_FROM), params.get("alpha"), params.get("beta")))
    else:
        out["ab"] = ""
    return out


def _validate_cell(path: Path, cell: Cell) -> None:
    if not cell.train:
        return
    from tokenseek.seeking.config import ScoreConfig
    from tokenseek.train.config import TrainConfig, validate

    try:
        ScoreConfig(grad_layer=cell.params["grad_layer"], grad_mode=cell.params["grad_mode"])  # checks their choices
        validate(TrainConfig(**{k: v for k, v in cell.params.items() if k not in SCORING_KEYS}))
    except TypeError as exc:
        raise _fail(path, f"cell {cell.name}: {exc}") from None
    except TokenSeekError as exc:
        raise _fail(path, f"cell {cell.name}: {exc}") from None


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
