"""The experiment runner: config expansion, a 2-cell toy study end to end, stop/resume, reports."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tokenseek.cli.main import main
from tokenseek.errors import TokenSeekError
from tokenseek.experiment import parse_study


def _study(tmp_path, model_dir, data_file, **extra) -> dict:
    config = {
        "study": "toy",
        "title": "Toy study",
        "description": "Two cells on a tiny random Llama.",
        "data": {"path": str(data_file), "sample": 16, "heldout": 6, "seed": 3},
        "defaults": {
            "model": str(model_dir),
            "max_length": 128,
            "batch_size": 1,
            "grad_accum": 4,
            "lr": 1e-3,
            "save_steps": 2,
            "logging_steps": 1,
        },
        "eval": {"heldout": True, "batch_size": 4},
        "runs_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results" / "toy"),
        "report": {
            "path": str(tmp_path / "RESULTS.md"),
            "reference": "full-token",
            "comparisons": [{"claim": "tokenseek matches full-token", "kind": "matches", "a": "tokenseek 50%", "b": "full-token"}],
        },
        "cells": [
            {"name": "full-s{seed}", "label": "full-token", "selection": "full", "ratio": 1.0, "grid": {"seed": [0]}},
            {"name": "ts{pct}-s{seed}", "label": "tokenseek {pct}%", "selection": "tokenseek", "ratio": 0.5, "select_from": "all", "seed": 0},
        ],
    }
    config.update(extra)
    return config


def _write(tmp_path, config) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_several_studies_run_one_after_the_other(tmp_path, tiny_model_dir, data_file, capsys):
    """A queue: each config is checked before any work, then each study runs and reports in turn."""
    configs = []
    for name in ("first", "second"):
        config = _study(tmp_path, tiny_model_dir, data_file)
        config.update(study=name, results_dir=str(tmp_path / "results" / name))
        config["cells"] = [config["cells"][0]]  # full-token only, with no claim to check
        config["report"].pop("comparisons")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs.append(str(path))
    broken = tmp_path / "broken.yaml"
    broken.write_text("study: broken\n")
    assert main(["experiment", *configs, str(broken)]) == 2
    assert not (tmp_path / "results").exists()  # refused before the first study started
    assert main(["experiment", *configs, "--only", "full-s0"]) == 2
    capsys.readouterr()
    assert main(["experiment", *configs]) == 0
    out = capsys.readouterr().out
    assert out.index("study first: 1 of 1") < out.index("study second: 1 of 1")
    assert (tmp_path / "results" / "first" / "full-s0.json").is_file() and (tmp_path / "results" / "second" / "full-s0.json").is_file()
    report = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- BEGIN experiment:first -->" in report and "<!-- BEGIN experiment:second -->" in report


def test_grid_expands_to_stably_named_cells(tmp_path):
    raw = {
        "study": "grid",
        "data": {"path": "x.json", "sample": 10, "heldout": 2},
        "defaults": {"peft": "lora"},
        "cells": [
            {"name": "base", "train": False},
            {
                "name": "{peft}-{selection}{pct}-a{alpha:g}b{beta:g}-N{grad_layer}-s{seed}",
                "label": "{selection} {pct}% ({ab})",
                "selection": "tokenseek",
                "grid": {"ratio": [0.05, 0.1], "alpha,beta": [[1, 0], [3, 7]], "seed": [0, 1], "grad_layer": [1, 2]},
            },
        ],
    }
    study = parse_study(raw)
    names = [c.name for c in study.cells]
    assert names[0] == "base" and len(names) == 1 + 2 * 2 * 2 * 2
    assert names[1] == "lora-tokenseek5-a1b0-N1-s0"
    assert "lora-tokenseek10-a3b7-N2-s1" in names
    assert study.labels()[1:] == ["tokenseek 5% (1,0)", "tokenseek 5% (3,7)", "tokenseek 10% (1,0)", "tokenseek 10% (3,7)"]
    assert parse_study(raw).cells == study.cells  # same config, same cells
    # cells differing only in grad_layer need their own score stores; seeds share one
    settings = {json.dumps(c.scoring(), sort_keys=True) for c in study.cells[1:]}
    assert len(settings) == 2
    assert study.select(["lora-tokenseek10-*-N2-*"]) == [c for c in study.cells if c.name.startswith("lora-tokenseek10") and "-N2-" in c.name]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, "unknown key"),
        ({"cells": [{"name": "a", "selection": "full"}, {"name": "a", "selection": "random"}]}, "unique"),
        ({"cells": [{"name": "a", "ratio": [0.1, 0.2]}]}, "under grid"),
        ({"cells": [{"name": "a", "selection": "nope"}]}, "unknown --selection"),
        ({"cells": [{"name": "a", "selection": "tokenseek", "grad_layer": 4}]}, "unknown --grad-layer 4: choose one of 1, 2, 3"),
        ({"cells": [{"name": "a", "lora_r": 0}]}, "cell a: --lora-r must be at least 1, got 0"),
        ({"cells": [{"name": "a", "output_dir": "x"}]}, "set by the experiment runner"),
        ({"cells": [{"name": "a-{nope}"}]}, "unknown field"),
        ({"report": {"reference": "no such row"}}, "no cell has that label"),
    ],
)
def test_bad_configs_are_one_line_errors(change, message):
    raw = {"study": "bad", "data": {"path": "x.json", "sample": 4, "heldout": 2}, "cells": [{"name": "a"}], **change}
    with pytest.raises(TokenSeekError, match=message):
        parse_study(raw)


def test_toy_study_stops_resumes_and_reports(tmp_path, tiny_model_dir, data_file, monkeypatch, capsys):
    import tokenseek.experiment.cells as cells
    import tokenseek.experiment.runner as runner
    import tokenseek.seeking.store as store

    config = _write(tmp_path, _study(tmp_path, tiny_model_dir, data_file))
    results = tmp_path / "results" / "toy"

    assert main(["experiment", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "full-s0" in out and "ts50-s0" in out and "todo" in out
    assert not results.exists()

    trained, scored = [], []
    real_train, real_score = runner.run_train, store.score_dataset

    def stop_in_second_cell(cfg):
        trained.append(cfg.selection)
        if cfg.selection == "tokenseek":
            raise KeyboardInterrupt  # as if Ctrl-C hit during the second cell's training
        return real_train(cfg)

    def count_scoring(*args, **kwargs):
        scored.append(1)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(runner, "run_train", stop_in_second_cell)
    monkeypatch.setattr(store, "score_dataset", count_scoring)
    assert main(["experiment", config]) == 130
    assert (results / "full-s0.json").is_file()
    assert not (results / "ts50-s0.json").exists()
    assert len(scored) == 1  # the second cell's scores were made before it was stopped

    # Rerun: the first cell is not re-run, the score store is reused, the second finishes.
    trained.clear()
    monkeypatch.setattr(runner, "run_train", lambda cfg: (trained.append(cfg.selection), real_train(cfg))[1])
    first_before = (results / "full-s0.json").read_text()
    assert main(["experiment", config]) == 0
    assert trained == ["tokenseek"]
    assert len(scored) == 1
    assert (results / "full-s0.json").read_text() == first_before

    second = json.loads((results / "ts50-s0.json").read_text())
    assert second["cell"]["name"] == "ts50-s0"
    assert second["train"]["steps"] == 4 and 0.45 < second["train"]["kept_fraction"] < 0.6
    assert second["train_config"]["selection"] == "tokenseek" and second["train_config"]["scores"]
    assert second["scoring"]["grad_layer"] == 1
    held = second["heldout"]
    assert held["records"] == 6 and len(held["per_example_loss"]) == 6 and held["loss"] > 0
    assert second["versions"]["torch"] and second["wall_time_s"]["train"] > 0
    assert second["loss_curve"] and second["loss_curve"][0]["step"] == 1

    # The record-by-record held-out loss equals one heldout_loss call on all records.
    from tokenseek.data import load_records
    from tokenseek.eval.heldout import heldout_loss
    from tokenseek.eval.model import load_for_eval

    from tokenseek.experiment import load_study

    study = load_study(config)
    model, tokenizer, _ = load_for_eval(str(cells.train_dir(study, study.cell("ts50-s0"))))
    heldout_file = next((tmp_path / "runs" / "data").glob("*/heldout.json"))
    whole = heldout_loss(model, tokenizer, load_records(str(heldout_file)), max_length=128)
    assert whole["loss"] == pytest.approx(held["loss"], rel=1e-4)
    assert whole["tokens"] == held["tokens"]

    # A finished study: no work, identical report.
    report = (tmp_path / "RESULTS.md").read_text()
    table = (results / "table.md").read_text()
    figure = (results / "loss_curves.png").read_bytes()
    trained.clear()
    capsys.readouterr()
    assert main(["experiment", config]) == 0
    assert trained == [] and "nothing to run" in capsys.readouterr().out
    assert main(["experiment", config, "--report"]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == report
    assert (results / "table.md").read_text() == table
    assert (results / "loss_curves.png").read_bytes() == figure
    assert "<!-- BEGIN experiment:toy -->" in report and "| tokenseek 50% | 1/1 |" in report
    assert "tokenseek matches full-token" in report and "2 SE" in report
    assert "2 of 2 cells finished" in report

    # Another study with a cell of the same settings reuses its run (no training, no scoring).
    other = _study(tmp_path, tiny_model_dir, data_file, study="toy2", results_dir=str(tmp_path / "results" / "toy2"))
    other["cells"] = [{"name": "same-as-ts", "label": "tokenseek 50%", "selection": "tokenseek", "ratio": 0.5, "select_from": "all", "seed": 0}]
    other["report"] = {"path": str(tmp_path / "RESULTS.md")}
    other_path = tmp_path / "toy2.yaml"
    other_path.write_text(yaml.safe_dump(other))
    assert main(["experiment", str(other_path)]) == 0
    assert trained == [] and len(scored) == 1
    reused = json.loads((tmp_path / "results" / "toy2" / "same-as-ts.json").read_text())
    assert reused["heldout"] == second["heldout"] and reused["train"] == second["train"]
    assert (reused["study"], reused["cell"]["name"], reused["shared_from"]) == ("toy2", "same-as-ts", "toy/ts50-s0.json")

    # On a new machine (no run folders, only the committed result files) the result file is reused;
    # a study that evaluates differently gets no shared result.
    import shutil

    shutil.rmtree(tmp_path / "runs")
    for name, evaluation in (("toy3", other["eval"]), ("toy4", {**other["eval"], "heldout_limit": 3})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**other, "study": name, "results_dir": str(tmp_path / "results" / name), "eval": evaluation}))
        capsys.readouterr()
        assert main(["experiment", str(path), "--dry-run"]) == 0
        plan = capsys.readouterr().out
        assert ("shared (toy)" in plan) == (name == "toy3"), plan
    assert main(["experiment", str(tmp_path / "toy3.yaml")]) == 0
    assert trained == [] and len(scored) == 1
    third = json.loads((tmp_path / "results" / "toy3" / "same-as-ts.json").read_text())
    assert third["heldout"] == second["heldout"] and third["shared_from"] == "toy/ts50-s0.json"
    assert "| same-as-ts (the run of toy) |" in (tmp_path / "RESULTS.md").read_text()
    both = (tmp_path / "RESULTS.md").read_text()
    assert both.count("BEGIN experiment:toy2 -->") == 1 and both.count("BEGIN experiment:toy -->") == 1
    assert both.startswith(report.rstrip("\n"))  # the first study's section is untouched

    # Text around the section is kept; the section is replaced in place.
    (tmp_path / "RESULTS.md").write_text("# Mine\n\nhand-written intro\n\n" + report.split("\n\n", 2)[2] + "\nfooter\n")
    assert main(["experiment", config, "--report"]) == 0
    again = (tmp_path / "RESULTS.md").read_text()
    assert again.startswith("# Mine\n\nhand-written intro") and again.endswith("footer\n") and again.count("BEGIN experiment:toy") == 1


def test_base_cell_and_only(tmp_path, tiny_model_dir, data_file, capsys):
    config = _study(tmp_path, tiny_model_dir, data_file)
    config["cells"].insert(0, {"name": "base", "label": "base model", "train": False})
    path = _write(tmp_path, config)
    assert main(["experiment", path, "--only", "base", "--no-report"]) == 0
    results = tmp_path / "results" / "toy"
    assert sorted(p.name for p in results.glob("*.json")) == ["base.json"]
    base = json.loads((results / "base.json").read_text())
    assert base["train"] is None and base["heldout"]["loss"] > 0
    assert main(["experiment", path, "--only", "nope"]) == 2
    assert "matches no cell" in capsys.readouterr().err
    for contradiction in (["--report", "--dry-run"], ["--report", "--no-report"]):
        assert main(["experiment", path, *contradiction]) == 2
        assert "--report only writes the report" in capsys.readouterr().err
    assert not (tmp_path / "RESULTS.md").exists()
    # The report lists the rows not run yet.
    assert main(["experiment", path, "--report"]) == 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "1 of 3 cells finished" in report and "`full-s0`" in report


def test_changed_config_marks_a_finished_cell_stale(tmp_path, tiny_model_dir, data_file, capsys):
    config = _study(tmp_path, tiny_model_dir, data_file)
    config["cells"] = [{"name": "base", "label": "base model", "train": False}]
    config["report"] = {"path": str(tmp_path / "RESULTS.md")}
    path = _write(tmp_path, config)
    assert main(["experiment", path, "--no-report"]) == 0
    capsys.readouterr()
    assert main(["experiment", path, "--dry-run"]) == 0
    assert "finished" in capsys.readouterr().out
    for section, key, value in (("defaults", "max_length", 100), ("eval", "heldout_limit", 3), ("data", "seed", 4)):
        changed = json.loads(json.dumps(config))
        changed[section][key] = value
        assert main(["experiment", _write(tmp_path, changed), "--dry-run"]) == 0
        assert "stale" in capsys.readouterr().out, section
        assert main(["experiment", _write(tmp_path, changed), "--no-report"]) == 0
        assert "delete" in capsys.readouterr().out  # a stale cell is not silently rerun


@pytest.mark.shared_data
def test_benchmarks_with_stderr_in_the_result(tmp_path, tiny_model_dir, data_file):
    from _shared_data import shared_data_dir

    eval_dir = shared_data_dir("eval")
    config = _study(tmp_path, tiny_model_dir, data_file)
    config["cells"] = [{"name": "base", "label": "base model", "train": False}]
    config["eval"] = {"heldout": False, "tasks": ["winogrande"], "limit": 4, "data_dir": str(eval_dir)}
    config["report"] = {"path": str(tmp_path / "RESULTS.md")}
    assert main(["experiment", _write(tmp_path, config)]) == 0
    result = json.loads((tmp_path / "results" / "toy" / "base.json").read_text())
    task = result["benchmarks"]["tasks"]["winogrande"]
    assert task["items"] == 4 and task["value"] is not None and task["stderr"] is not None
    assert "winogrande" in (tmp_path / "RESULTS.md").read_text()


def test_qlora_cells_score_with_the_nf4_model_and_share_the_store(tmp_path, tiny_model_dir, data_file):
    pytest.importorskip("bitsandbytes")
    config = _study(tmp_path, tiny_model_dir, data_file)
    config["report"] = {"path": str(tmp_path / "RESULTS.md")}
    config["cells"] = [
        {"name": "q-ts", "peft": "qlora", "selection": "tokenseek", "ratio": 0.5},
        {"name": "q-probe", "peft": "qlora", "selection": "probe", "ratio": 0.2},
    ]
    assert main(["experiment", _write(tmp_path, config)]) == 0
    results = [json.loads((tmp_path / "results" / "toy" / f"{n}.json").read_text()) for n in ("q-ts", "q-probe")]
    assert all(r["scoring"]["quantize"] == "nf4" and r["train"]["steps"] == 4 for r in results)
    assert results[0]["scoring"]["store"] == results[1]["scoring"]["store"]  # one store for both cells


def test_base_cell_with_qlora_evaluates_the_nf4_model(tmp_path, tiny_model_dir, data_file):
    """QLoRA rows start from the NF4-quantised model, so their base reference must be that model."""
    pytest.importorskip("bitsandbytes")
    config = _study(tmp_path, tiny_model_dir, data_file)
    config["report"] = {"path": str(tmp_path / "RESULTS.md")}
    config["defaults"]["peft"] = "lora"  # the study default must not leak into the fp32 base cell
    config["cells"] = [
        {"name": "base", "label": "base model", "train": False},
        {"name": "qlora-base", "label": "NF4 base model", "train": False, "peft": "qlora"},
    ]
    assert main(["experiment", _write(tmp_path, config)]) == 0
    fp32, nf4 = (json.loads((tmp_path / "results" / "toy" / f"{n}.json").read_text())["heldout"] for n in ("base", "qlora-base"))
    assert fp32["loaded"]["quantize"] is None and nf4["loaded"]["quantize"] == "nf4"
    assert fp32["tokens"] == nf4["tokens"] and abs(fp32["loss"] - nf4["loss"]) > 1e-4  # quantisation moved the loss
    assert "| qlora-base | (base model) | — | — | — | qlora (NF4) |" in (tmp_path / "RESULTS.md").read_text()


def test_committed_study_configs_load_and_share_runs():
    """Every study in experiments/ parses, and cells with the same settings in two studies
    (equal_time's full-token reference, alpaca_lmeval's cells) resolve to Study A's runs."""
    from pathlib import Path

    from tokenseek.experiment import load_study
    from tokenseek.experiment.cells import train_dir

    root = Path(__file__).resolve().parent.parent / "experiments"
    studies = {p.stem: load_study(p) for p in sorted(root.glob("*.yaml"))}
    assert {"alpaca", "equal_time", "shortanswer"} <= set(studies)
    for study in studies.values():
        assert len({c.name for c in study.cells}) == len(study.cells)

    def cell(study, name):
        return next(c for c in studies[study].cells if c.name == name)

    assert train_dir(studies["equal_time"], cell("equal_time", "full-s0")) == train_dir(studies["alpaca"], cell("alpaca", "full-s0"))
    # alpha_beta_targets copies Study A's settings: its (1,1) row is Study A's run, its (0,1) row is new.
    for name in ("full-s1", "targets-random10-s2", "targets-tokenseek10-a1b1-s0", "targets-tokenseek10-a1b0-s2"):
        assert train_dir(studies["alpha_beta_targets"], cell("alpha_beta_targets", name)) == train_dir(studies["alpaca"], cell("alpaca", name))
    assert train_dir(studies["alpha_beta_targets"], cell("alpha_beta_targets", "targets-tokenseek10-a0b1-s0")) not in {
        train_dir(studies["alpaca"], c) for c in studies["alpaca"].cells if c.train
    }
    # More epochs is a different run, never a reused one.
    assert train_dir(studies["equal_time"], cell("equal_time", "equal-tokenseek10-a1b0-s0")) != train_dir(
        studies["alpaca"], cell("alpaca", "targets-tokenseek10-a1b0-s0")
    )


def _results_only_study(tmp_path, name: str, cells: list, **report):
    """A study whose results are written by the test (no data, no training): for report checks."""
    config = {
        "study": name,
        "data": {"path": "x.json", "sample": 4, "heldout": 2},
        "results_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
        "eval": {"heldout": True, "exact_match": True},
        "report": {"path": str(tmp_path / "RESULTS.md"), "reference": "full-token", **report},
        "cells": cells,
    }
    return parse_study(config, path=tmp_path / f"{name}.yaml")


def _write_results(study, results: dict) -> None:
    from tokenseek.experiment.cells import result_path

    for name, result in results.items():
        path = result_path(study, study.cell(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))


def test_ratio_sweep_figure_from_result_files(tmp_path):
    """Fig. 3 data: one line per spread across ratios, mean/min/max over the finished seeds,
    the reference row as a level; drawn once, and unchanged on a second report."""
    from tokenseek.experiment.figures import ratio_panels
    from tokenseek.experiment.report import load_results, rows, write_report

    study = _results_only_study(
        tmp_path, "sweep",
        [
            {"name": "full-s{seed}", "label": "full-token", "selection": "full", "ratio": 1.0, "grid": {"seed": [0, 1]}},
            {"name": "rnd{pct}-s{seed}", "label": "random {pct}%", "selection": "random", "grid": {"ratio": [0.05, 0.2], "seed": [0, 1, 2]}},
        ],
        spreads=[
            {"claim": "random across ratios", "metric": "exact_match", "labels": ["random 5%", "random 20%"]},
            {"claim": "one ratio only: no line", "labels": ["random 5%"]},
        ],
    )
    accuracy = {"full-s0": 0.8, "full-s1": 0.6, "rnd5-s0": 0.3, "rnd5-s1": 0.1, "rnd5-s2": 0.4, "rnd20-s0": 0.7, "rnd20-s1": 0.5}
    # rnd20-s2 is not finished
    _write_results(study, {name: {"exact_match": {"accuracy": acc, "per_example_correct": [1, 0]}} for name, acc in accuracy.items()})

    (panel,) = ratio_panels(study, rows(study, load_results(study)))
    (line,) = panel["series"]
    assert line["label"] == "random"
    assert line["points"] == [
        (0.05, pytest.approx(100 * (0.1 + 0.4 + 0.3) / 3), pytest.approx(10.0), pytest.approx(40.0)),
        (0.2, pytest.approx(60.0), pytest.approx(50.0), pytest.approx(70.0)),
    ]
    assert panel["reference"]["value"] == pytest.approx(70.0)

    written = write_report(study)
    figure = tmp_path / "results" / "ratio_sweep.png"
    assert written["ratio_figure"] == str(figure) and figure.read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "RESULTS.md").read_text()
    assert "![Quality against ratio, study sweep](results/ratio_sweep.png)" in report
    before = figure.stat().st_mtime_ns, report
    write_report(study)
    assert (figure.stat().st_mtime_ns, (tmp_path / "RESULTS.md").read_text()) == before


def test_a_cell_another_process_holds_is_skipped_and_a_busy_store_is_waited_for(tmp_path, tiny_model_dir, data_file, capsys):
    """Two runner processes on one study: the cell lock sends the second past a running cell,
    and a score store being written by one is waited for by the other (not scored twice)."""
    import threading

    from tokenseek.experiment import load_study
    from tokenseek.experiment.cells import lock_path, run_dir, store_dir
    from tokenseek.experiment.data import sample_data
    from tokenseek.experiment.runner import ensure_scores
    from tokenseek.utils.io import file_lock

    config = _study(tmp_path, tiny_model_dir, data_file)
    config["cells"].insert(0, {"name": "base", "label": "base model", "train": False})
    path = _write(tmp_path, config)
    study = load_study(path)
    results = tmp_path / "results" / "toy"

    with file_lock(lock_path(run_dir(study, study.cell("full-s0"))), wait=False) as held:
        assert held
        assert main(["experiment", path, "--only", "base", "full-s0", "--no-report"]) == 0
        out = capsys.readouterr().out
        assert "full-s0: running in another process; skipped" in out
        assert sorted(p.name for p in results.glob("*.json")) == ["base.json"]
        assert main(["experiment", path, "--dry-run"]) == 0
        assert re.search(r"full-s0\s+running, todo", capsys.readouterr().out)
    assert main(["experiment", path, "--only", "full-s0", "--no-report"]) == 0  # released: it runs now
    assert (results / "full-s0.json").is_file()

    cell = study.cell("ts50-s0")
    folder = store_dir(study, cell.scoring())
    data = sample_data(study)
    lines: list[str] = []
    lock = file_lock(lock_path(folder), wait=False)
    assert lock.__enter__()
    timer = threading.Timer(1.0, lambda: lock.__exit__(None, None, None))
    timer.start()
    try:
        assert ensure_scores(study, cell, data, lines.append) == folder
    finally:
        timer.join()
    assert lines[0] == f"  waiting for another process to finish scoring {folder}"
    assert json.loads((folder / "meta.json").read_text())["complete"]


def test_a_cell_whose_store_another_process_writes_goes_behind_the_others(tmp_path, tiny_model_dir, data_file, capsys):
    """While another process scores the store a cell needs, the runner trains the cells that need
    no store first (instead of idling), then takes the waiting cell."""
    import threading

    from tokenseek.experiment import load_study
    from tokenseek.experiment.cells import lock_path, store_dir
    from tokenseek.utils.io import file_lock

    config = _study(tmp_path, tiny_model_dir, data_file)
    config["cells"].reverse()  # the TokenSeek cell (needs the store) first, full-token after it
    path = _write(tmp_path, config)
    study = load_study(path)
    folder = store_dir(study, study.cell("ts50-s0").scoring())
    lock = file_lock(lock_path(folder), wait=False)
    assert lock.__enter__()  # "another process" is scoring the store ...
    timer = threading.Timer(3.0, lambda: lock.__exit__(None, None, None))  # ... and finishes later
    timer.start()
    try:
        assert main(["experiment", path, "--no-report"]) == 0
    finally:
        timer.join()
    out = capsys.readouterr().out
    deferred = out.index("ts50-s0: its score store is being written by another process; running other cells first")
    assert deferred < out.index("[1/2] full-s0") < out.index("[2/2] ts50-s0")
    assert sorted(p.name for p in (tmp_path / "results" / "toy").glob("*.json")) == ["full-s0.json", "ts50-s0.json"]


def test_lower_seed_variance_is_an_f_test():
    """Claim (iii): 'a varies less than b' is held only when an F-test says so; with three seeds
    each, F(2, 2) has the closed form P(F > x) = 1 / (1 + x)."""
    from tokenseek.experiment.report import verdict

    def row(losses):
        return {"label": "x", "cells": [None] * len(losses), "done": [(None, {"heldout": {"loss": v}}) for v in losses]}

    steady, noisy, noisier = row([1.0, 1.001, 1.002]), row([1.0, 1.01, 1.02]), row([1.0, 1.03, 1.06])
    # var(noisy) / var(steady) = 100 -> p = 1/101 < 0.05: held.
    text = verdict("lower_seed_variance", steady, noisy)
    assert text.startswith("**held**") and "F = 100.00" in text and f"p = {1 / 101:.3f}" in text
    # var ratio 9 -> p = 0.1: lower, but not beyond noise.
    text = verdict("lower_seed_variance", noisy, noisier)
    assert text.startswith("**not shown**") and "F = 9.00" in text and "p = 0.100" in text
    assert verdict("lower_seed_variance", noisier, noisy).startswith("**not held**")
    assert verdict("lower_seed_variance", row([1.0, 1.1]), noisy).startswith("**not testable**")


def test_claims_list_the_difference_seed_by_seed():
    """Rows are compared seed with seed (same data order and initialisation); a seed only one
    row finished is left out."""
    from types import SimpleNamespace

    from tokenseek.experiment.report import verdict

    def row(losses):
        done = [(SimpleNamespace(params={"seed": s}), {"heldout": {"loss": v, "per_example_loss": [v, v + 0.1], "per_example_tokens": [3, 5]}})
                for s, v in losses.items()]
        return {"label": "x", "cells": [c for c, _ in done], "done": done}

    a, b = row({0: 1.90, 1: 1.95, 2: 1.80}), row({0: 1.92, 2: 1.85, 3: 2.0})
    text = verdict("beats", a, b)
    assert text.endswith("; per seed: s0 -0.0200, s2 -0.0500.")
    assert "per seed" not in verdict("beats", a, row({1: 1.9, 4: 1.9}))  # one shared seed: no list


def test_rows_with_different_finished_seeds_are_compared_on_the_shared_ones():
    """While a study runs, a row with seeds 0-1 against one with seed 0 only is judged on seed 0
    (the mean over both of a's seeds would add seed-to-seed noise); an untrained row (the base
    model) is compared with every seed."""
    from types import SimpleNamespace

    from tokenseek.experiment.report import verdict
    from tokenseek.experiment.stats import compare

    def row(losses, train=True):
        done = [(SimpleNamespace(params={"seed": s}, train=train), {"heldout": {"loss": v, "per_example_loss": [v - 0.1, v + 0.1], "per_example_tokens": [1, 1]}})
                for s, v in losses.items()]
        return {"label": "x", "cells": [c for c, _ in done], "done": done}

    two, one = row({0: 1.90, 1: 2.10}), row({0: 1.95})
    c = compare(two, one)
    assert c["delta"] == pytest.approx(-0.05) and c["matched_seeds"] == [0] and c["n_a"] == 1
    assert "on the seeds both rows have finished (s0)" in verdict("beats", two, one)
    c = compare(two, row({0: 2.5}, train=False))
    assert c["delta"] == pytest.approx(2.0 - 2.5) and c["matched_seeds"] is None and c["n_a"] == 2
    assert compare(two, row({0: 1.8, 1: 2.0}))["matched_seeds"] is None  # same seeds: nothing cut


def test_exact_match_per_task_table_averages_the_seeds(tmp_path):
    from tokenseek.experiment.report import load_results, rows, write_report
    from tokenseek.experiment.tasks import task_table

    study = _results_only_study(tmp_path, "tasks", [
        {"name": "full-s{seed}", "label": "full-token", "selection": "full", "ratio": 1.0, "grid": {"seed": [0, 1]}},
        {"name": "rnd-s{seed}", "label": "random 10%", "selection": "random", "ratio": 0.1, "grid": {"seed": [0, 1]}},
    ])
    assert task_table(rows(study, load_results(study))) is None  # nothing measured: no table
    per_task = {
        "full-s0": {"roman": 0.5, "clock": 1.0},
        "full-s1": {"roman": 0.25, "clock": 0.5},
        "rnd-s0": {"roman": 0.0},  # rnd-s1 is not finished; this cell saw no clock item
    }
    _write_results(study, {
        name: {"exact_match": {"accuracy": 0.5, "per_example_correct": [1, 0], "per_task": {t: {"records": 4, "accuracy": a} for t, a in tasks.items()}}}
        for name, tasks in per_task.items()
    })

    table = task_table(rows(study, load_results(study)))
    lines = table.splitlines()
    assert lines[0] == "| setting | runs | `clock` | `roman` |"
    assert lines[2] == "| full-token | 2 | 75.0 | 37.5 |"
    assert lines[3] == "| random 10% | 1 | — | 0.0 |"
    write_report(study)
    assert "<details><summary>Exact match per task</summary>" in (tmp_path / "RESULTS.md").read_text()


def test_heldout_loss_per_task_of_generated_data(tmp_path):
    """Each task's loss is token-weighted within a seed and averaged over seeds, and the task
    of each record comes from the study's generator (records in order); file data gets none."""
    from tokenseek.data.generators import generate_splits
    from tokenseek.experiment.config import parse_study
    from tokenseek.experiment.report import load_results, rows, write_report
    from tokenseek.experiment.tasks import heldout_task_table, heldout_tasks

    file_study = _results_only_study(tmp_path, "file", [{"name": "full-s0", "label": "full-token", "selection": "full", "ratio": 1.0}])
    assert heldout_tasks(file_study) is None
    study = parse_study({
        "study": "gen",
        "data": {"generator": "shortanswer", "train": 4, "test": 8, "seed": 3},
        "results_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
        "eval": {"heldout": True},
        "report": {"path": str(tmp_path / "RESULTS.md"), "reference": "full-token"},
        "cells": [{"name": "full-s{seed}", "label": "full-token", "selection": "full", "ratio": 1.0, "grid": {"seed": [0, 1]}}],
    }, path=tmp_path / "gen.yaml")
    tasks = [r["task"] for r in generate_splits("shortanswer", 4, 8, 3)[1]]
    assert heldout_tasks(study) == tasks and len(set(tasks)) >= 2
    losses = {"full-s0": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, None], "full-s1": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]}
    tokens = [1, 2, 3, 4, 1, 2, 3, 0]
    _write_results(study, {name: {"heldout": {"loss": 1.0, "perplexity": 2.7, "per_example_loss": l, "per_example_tokens": tokens}} for name, l in losses.items()})

    def expected(task):  # written out: seed 0's token-weighted mean, seed 1's is 2.0
        pairs = [(l, t) for l, t, name in zip(losses["full-s0"], tokens, tasks) if name == task and l is not None and t]
        return (sum(l * t for l, t in pairs) / sum(t for _, t in pairs) + 2.0) / 2 if pairs else 2.0

    table = heldout_task_table(rows(study, load_results(study)), tasks)
    lines = table.splitlines()
    names = sorted({name for name, t in zip(tasks, tokens) if t})  # a task with no scored token has no column
    assert lines[0] == "| setting | runs | " + " | ".join(f"`{t}`" for t in names) + " |"
    share = [sum(t for t, name in zip(tokens, tasks) if name == task) / sum(tokens) for task in names]
    assert lines[2] == "| share of answer tokens |  | " + " | ".join(f"{100 * s:.1f} %" for s in share) + " |"
    assert lines[3] == "| full-token | 2 | " + " | ".join(f"{expected(t):.3f}" for t in names) + " |"
    write_report(study)
    assert "<details><summary>Held-out loss per task</summary>" in (tmp_path / "RESULTS.md").read_text()


def test_dry_run_estimates_the_time_left_from_finished_cells(tmp_path, capsys):
    from tokenseek.experiment.cells import cell_status
    from tokenseek.experiment.runner import remaining_estimate

    study = _results_only_study(tmp_path, "left", [
        {"name": "full-s{seed}", "label": "full-token", "selection": "full", "ratio": 1.0, "grid": {"seed": [0, 1, 2, 3, 4]}},
    ])
    assert remaining_estimate(study, study.cells, {c.name: "todo" for c in study.cells}) is None  # nothing measured yet
    for name, total in (("full-s0", 600.0), ("full-s1", 1200.0)):
        result = {"cell": study.cell(name).identity(), "data": {"spec": study.data_spec()}, "eval": study.eval, "wall_time_s": {"total": total}}
        _write_results(study, {name: result})
    statuses = {c.name: cell_status(study, c) for c in study.cells}
    assert [statuses[f"full-s{i}"] for i in range(5)] == ["finished", "finished", "todo", "todo", "todo"]
    text = remaining_estimate(study, study.cells, statuses)
    assert text.startswith("3 trained cell(s) left; the 2 finished took 15 min each") and "about 0.8 h in one process" in text


def test_experiment_options_are_checked_where_they_are_built(tmp_path, tiny_model_dir, data_file):
    """ExperimentOptions (the library form of the command) refuses what the CLI refuses, and
    run_experiments does what the command does: here, a dry run that writes nothing."""
    from tokenseek.errors import TokenSeekError
    from tokenseek.experiment.job import ExperimentOptions, run_experiments

    path = _write(tmp_path, _study(tmp_path, tiny_model_dir, data_file))
    for kwargs, needle in (
        ({"configs": []}, "give at least one study config"),
        ({"configs": [path], "report": True, "dry_run": True}, "--report only writes the report"),
        ({"configs": [path, path], "only": ["x"]}, "--report-path and --only are for one study"),
        ({"configs": [path], "threads": 0}, "--threads must be at least 1, got 0"),
    ):
        with pytest.raises(TokenSeekError, match=re.escape(needle)):
            ExperimentOptions(**kwargs)
    lines = []
    run_experiments(ExperimentOptions(configs=[path], dry_run=True), progress=lines.append)
    assert any("todo" in line for line in lines)
    assert not (tmp_path / "results").exists() and not (tmp_path / "RESULTS.md").exists()
    with pytest.raises(SystemExit):
        main(["experiment", path, "--no-dry-run"])  # a plain switch: no negated form


def test_selection_stats_of_runs_trained_before_the_answer_position_was_counted(tmp_path, tiny_model_dir, data_file):
    """A run whose training summary predates a tally field: the offline selection is recomputed
    (and agrees with the summary's counts); an online one, which cannot be recomputed, reports None."""
    from tokenseek.experiment import load_study
    from tokenseek.experiment.runner import sample_data, selection_stats

    config = _study(tmp_path, tiny_model_dir, data_file)
    config["cells"] = [
        {"name": "rand", "selection": "random", "ratio": 0.5, "select_from": "targets", "seed": 0},
        {"name": "online", "selection": "tokenseek", "seeking": "online", "ratio": 0.5, "seed": 0},
    ]
    config["report"] = {"path": str(tmp_path / "RESULTS.md")}
    study = load_study(_write(tmp_path, config))
    data = sample_data(study)
    fresh = selection_stats(study.cell("rand"), data, None, None)
    assert 0 <= fresh["kept_target_answer_position"] <= 1 and fresh["kept_positions_with_target"] > 0
    old = {"tokens_kept": fresh["kept_positions"], "kept_targets": fresh["kept_positions_with_target"],
           "target_positions": fresh["target_positions"], "kept_target_share": fresh["target_fraction_trained"],
           "examples_without_kept_target": fresh["examples_without_kept_target"], "examples": fresh["examples"]}
    assert selection_stats(study.cell("rand"), data, None, old) == fresh
    online = selection_stats(study.cell("online"), data, None, {**old, "kept_targets": 7})
    assert online["kept_target_answer_position"] is None and online["kept_positions_with_target"] == 7


def test_train_loss_column_covers_the_whole_run_after_a_resume():
    """HF's training_loss of a resumed run averages only the steps since the resume; the table
    takes the mean of the run's logged per-step losses instead (the same for a run in one go)."""
    from tokenseek.experiment.report import run_train_loss

    curve = [{"step": s, "loss": loss} for s, loss in enumerate([3.0, 2.0, 1.0, 0.5, 0.5], start=1)]
    resumed = {"train": {"train_loss": 0.6666, "resumed_from": "checkpoint-2"}, "loss_curve": curve}
    assert run_train_loss(resumed) == pytest.approx(7.0 / 5)
    assert run_train_loss({"train": {"train_loss": 0.9}, "loss_curve": None}) == 0.9  # files without a curve
