"""Study B: the short-answer generator, the exact-match scorer, and both in the experiment runner."""

from __future__ import annotations

import datetime
import json
import re

import pytest
import torch
import yaml

from tokenseek.cli.main import main
from tokenseek.data.generators import generate_splits
from tokenseek.data.shortanswer import TASKS, shortanswer_splits
from tokenseek.errors import TokenSeekError
from tokenseek.eval.exact_match import extract_answer, greedy_answers, is_correct, normalise_answer
from tokenseek.experiment import parse_study


# ----------------------------------------------------------------------------- independent solutions
def _fields(record: dict) -> dict:
    return dict(line.split(": ", 1) for line in record["input"].split("\n"))


def _roman(n: int) -> str:
    # Digit by digit, unlike the generator's greedy subtraction.
    ones = ["", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"]
    tens = ["", "X", "XX", "XXX", "XL", "L", "LX", "LXX", "LXXX", "XC"]
    hundreds = ["", "C", "CC", "CCC", "CD", "D", "DC", "DCC", "DCCC", "CM"]
    return "M" * (n // 1000) + hundreds[n // 100 % 10] + tens[n // 10 % 10] + ones[n % 10]


def solve(record: dict) -> str:
    """Recompute the answer from the record's text alone (not from the generator's code)."""
    f = _fields(record)
    task = record["task"]
    if task == "arithmetic":
        expr = f["Expression"]
        assert re.fullmatch(r"[\d\s+\-*()]+", expr), expr
        return str(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits and operators only, checked above
    if task == "sort_numbers":
        nums = [int(x) for x in f["Numbers"].split(", ")]
        return ", ".join(map(str, sorted(nums, reverse=f["Order"] == "descending")))
    if task == "reverse_words":
        return ", ".join(f["Words"].split(", ")[::-1])
    if task == "list_statistic":
        nums = [int(x) for x in f["Numbers"].split(", ")]
        op = f["Operation"]
        if op.startswith("count above "):
            return str(len([n for n in nums if n > int(op.rsplit(" ", 1)[1])]))
        return str({"largest": max, "smallest": min, "sum": sum}[op](nums))
    if task == "count_word":
        return str(f["Words"].split(", ").count(f["Target"]))
    if task == "filter_words":
        return ", ".join(w for w in f["Words"].split(", ") if w.startswith(f["Letter"]))
    if task == "roman":
        return _roman(int(f["Number"]))
    if task == "date_format":
        d = datetime.date.fromisoformat(f["Date"])
        target = f["Target format"]
        return {"DD/MM/YYYY": d.strftime("%d/%m/%Y"), "MM-DD-YYYY": d.strftime("%m-%d-%Y"), "Month D, YYYY": f"{d:%B} {d.day}, {d.year}"}[target]
    if task == "clock":
        t = datetime.datetime.strptime(f["Time"], "%H:%M")
        return t.strftime("%I:%M %p").lstrip("0")
    if task == "binary":
        return str(int(f["Binary"], 2))
    if task == "snake_case":
        return f["Phrase"].lower().replace(" ", "_")
    raise AssertionError(f"no independent solution for task {task!r}: add one to solve()")


def _wrong(answer: str) -> str:
    """A near miss: another number, another order, or another string."""
    items = answer.split(", ")
    if len(items) > 1 and items[0] != items[-1]:
        return ", ".join(items[::-1])
    if answer.lstrip("-").isdigit():
        return str(int(answer) + 1)
    return answer + "X"


# ----------------------------------------------------------------------------- generator
def test_generator_is_deterministic_per_seed_and_differs_across_seeds():
    a = shortanswer_splits(200, 50, seed=0)
    assert a == shortanswer_splits(200, 50, seed=0)
    assert a == generate_splits("shortanswer", 200, 50, 0)  # the name a study config uses
    b = shortanswer_splits(200, 50, seed=1)
    assert [r["input"] for r in a[0]] != [r["input"] for r in b[0]]
    assert [r["input"] for r in a[1]] != [r["input"] for r in b[1]]
    train, test = a
    assert len(train) == 200 and len(test) == 50
    keys = {(r["instruction"], r["input"]) for r in train}
    assert len(keys) == 200 and not keys & {(r["instruction"], r["input"]) for r in test}
    assert all(set(r) == {"task", "instruction", "input", "output"} and r["output"].strip() for r in train + test)


def test_every_answer_is_recomputed_independently_and_checkable():
    train, test = shortanswer_splits(2000, 500, seed=0)
    records = train + test
    assert {r["task"] for r in records} == set(TASKS)  # every task is drawn, and solve() knows each
    for r in records:
        assert solve(r) == r["output"], r
        assert is_correct(r["output"], r["output"])
        assert not is_correct(_wrong(r["output"]), r["output"]), r
    # Formatting noise is forgiven, a different answer is not.
    assert is_correct("  The End.\n", "the end")
    assert is_correct("\n3 ,7,  19\nsome more text", "3, 7, 19")
    assert not is_correct("19, 7, 3", "3, 7, 19")
    assert not is_correct("", "0")
    assert extract_answer("\n\n  42  \n43") == "42" and normalise_answer("A  B.") == "a b"


def test_generator_arguments_are_checked():
    with pytest.raises(TokenSeekError, match="unknown data generator"):
        generate_splits("nope", 1, 1)
    with pytest.raises(TokenSeekError, match="whole number"):
        shortanswer_splits(-1, 1)


# ----------------------------------------------------------------------------- greedy answers
@pytest.fixture(scope="module")
def loud_model_dir(tmp_path_factory):
    """A tiny Llama with the SmolLM2 tokenizer and large weights: its logits have clear winners,
    so greedy answers are non-trivial text and do not hinge on float noise."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tokenseek.models import load_tokenizer

    tokenizer = load_tokenizer(None)
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("loud-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_left_padded_batches_give_the_unbatched_greedy_answers(loud_model_dir):
    from tokenseek.data import prompt_ids
    from tokenseek.eval.model import load_for_eval

    model, tokenizer, _ = load_for_eval(str(loud_model_dir))
    records = shortanswer_splits(0, 5, seed=2)[1]
    batched = greedy_answers(model, tokenizer, records, max_new_tokens=12, batch_size=5)
    single = greedy_answers(model, tokenizer, records, max_new_tokens=12, batch_size=1)
    assert [extract_answer(a) for a in batched] == [extract_answer(a) for a in single]
    assert any(extract_answer(a) for a in batched)  # not a vacuous comparison of empty strings
    # And both equal a plain argmax loop on the unpadded prompt (the training prompt tokens).
    ids = torch.tensor([prompt_ids(records[0], tokenizer)])
    new = []
    with torch.no_grad():
        for _ in range(12):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert extract_answer(tokenizer.decode(new, skip_special_tokens=True)) == extract_answer(batched[0])


def test_too_small_answer_budget_is_a_one_line_error(loud_model_dir):
    from tokenseek.eval.exact_match import exact_match
    from tokenseek.eval.model import load_for_eval

    model, tokenizer, _ = load_for_eval(str(loud_model_dir))
    records = [r for r in shortanswer_splits(0, 40, seed=0)[1] if r["task"] == "sort_numbers"][:1]
    with pytest.raises(TokenSeekError, match="raise eval.exact_match_max_new_tokens"):
        exact_match(model, tokenizer, records, max_new_tokens=3)


def test_eval_cli_exact_match_on_a_users_file(loud_model_dir, tmp_path, capsys):
    """`tokenseek eval --heldout FILE --exact-match`: records whose output is the model's own
    greedy answer count as right, the others as wrong; bad requests are one-line errors."""
    from tokenseek.eval.model import load_for_eval

    model, tokenizer, _ = load_for_eval(str(loud_model_dir))
    candidates = shortanswer_splits(0, 24, seed=3)[1]
    answers = [extract_answer(a) for a in greedy_answers(model, tokenizer, candidates, max_new_tokens=24, batch_size=4)]
    # Same budget below, so the same answers; one that re-tokenises longer than the budget is refused, not compared.
    fits = [bool(a) and len(tokenizer(a, add_special_tokens=False)["input_ids"]) <= 24 for a in answers]
    picked = [(r, a) for r, a, ok in zip(candidates, answers, fits) if ok][:4]
    assert len(picked) == 4
    records = [{"instruction": r["instruction"], "input": r["input"], "output": a if i < 2 else "(not the answer)"} for i, (r, a) in enumerate(picked)]
    data, out = tmp_path / "test.json", tmp_path / "em.json"
    data.write_text(json.dumps(records))

    argv = ["eval", "--model", str(loud_model_dir), "--heldout", str(data), "--exact-match", "--max-new-tokens", "24", "--output", str(out)]
    assert main(argv) == 0
    em = json.loads(out.read_text())["exact_match"]
    assert em["per_example_correct"] == [1, 1, 0, 0] and em["accuracy"] == 0.5
    assert "exact match 50.0 % (2 of 4 greedy answers" in capsys.readouterr().out

    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]))
    for bad, message in [
        (["--exact-match"], "--exact-match compares answers with held-out records: give --heldout DATA"),
        (["--heldout", str(chat), "--exact-match"], "--exact-match needs Alpaca records"),
        (["--heldout", str(data), "--exact-match", "--max-new-tokens", "1"], "raise --max-new-tokens to at least"),
    ]:
        assert main(["eval", "--model", str(loud_model_dir), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- study config
def _config(tmp_path, model_dir, **extra) -> dict:
    config = {
        "study": "sa",
        "data": {"generator": "shortanswer", "train": 12, "test": 5, "seed": 0},
        "order": "seed",
        "defaults": {"model": str(model_dir), "max_length": 256, "batch_size": 1, "grad_accum": 4, "lr": 1e-3, "save_steps": 2},
        "eval": {"heldout": True, "exact_match": True, "batch_size": 5},
        "runs_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        "report": {
            "path": str(tmp_path / "RESULTS.md"),
            "reference": "base",
            "comparisons": [{"claim": "fine-tuning beats the base model", "kind": "beats", "a": "full-token", "b": "base", "metric": "exact_match"}],
        },
        "cells": [
            {"name": "base", "label": "base", "train": False},
            {"name": "full-s{seed}", "label": "full-token", "selection": "full", "ratio": 1.0, "grid": {"seed": [0, 1]}},
            {"name": "rnd-s{seed}", "label": "random 10%", "selection": "random", "ratio": 0.1, "select_from": "all", "grid": {"seed": [0, 1]}},
        ],
    }
    config.update(extra)
    return config


def test_seed_order_and_generated_data_config(tmp_path):
    study = parse_study(_config(tmp_path, "m"))
    assert [c.name for c in study.cells] == ["base", "full-s0", "rnd-s0", "full-s1", "rnd-s1"]
    assert study.labels() == ["base", "full-token", "random 10%"]
    assert study.data_spec() == {"generator": "shortanswer", "train": 12, "test": 5, "seed": 0}
    listed = parse_study(_config(tmp_path, "m", order="config"))
    assert [c.name for c in listed.cells] == ["base", "full-s0", "full-s1", "rnd-s0", "rnd-s1"]
    # A file-based data section keeps exactly its old keys (its runs and results stay current).
    filed = parse_study(_config(tmp_path, "m", data={"path": "x.json", "sample": 4, "heldout": 2}))
    assert filed.data_spec() == {"path": "x.json", "sample": 4, "heldout": 2, "seed": 0, "fields": None}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"generator": "nope", "train": 3, "test": 1}}, "unknown data.generator"),
        ({"data": {"generator": "shortanswer", "train": 3, "test": 1, "path": "x.json"}}, "replaces path"),
        ({"data": {"generator": "shortanswer", "train": 0, "test": 1}}, "data.train must be a whole number >= 1"),
        ({"data": {"generator": "shortanswer", "train": 3, "test": 0}}, "data.test is 0"),
        ({"order": "random"}, "order must be one of"),
        ({"eval": {"heldout": True, "exact_match_max_new_tokens": 0}}, "exact_match_max_new_tokens"),
        ({"eval": {"heldout": True, "exact_match": False}}, "eval.exact_match is off"),
        ({"report": {"comparisons": [{"kind": "beats", "a": "base", "b": "base", "metric": "bleu"}]}}, "metric must be one of"),
    ],
)
def test_bad_study_b_configs_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(TokenSeekError, match=message) as info:
        parse_study(_config(tmp_path, "m", **change))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- runner + report
def test_study_scores_base_and_finetuned_through_one_path(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import tokenseek.eval.exact_match as em
    from tokenseek.data import load_records
    from tokenseek.eval.model import load_for_eval
    from tokenseek.experiment import load_study
    from tokenseek.experiment.cells import train_dir

    calls = []
    real = em.greedy_answers

    def spy(model, tokenizer, records, **kwargs):
        calls.append(type(model).__name__)
        answers = real(model, tokenizer, records, **kwargs)
        # After the base model, an "oracle" answers: the numbers in the report must then move.
        return answers if len(calls) == 1 else [r["output"] + "\nmore text" for r in records]

    monkeypatch.setattr(em, "greedy_answers", spy)
    path = tmp_path / "sa.yaml"
    config = _config(tmp_path, tiny_model_dir)
    config["cells"] = config["cells"][:2]
    config["cells"][1]["grid"] = {"seed": [0]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["experiment", str(path)]) == 0
    assert len(calls) == 2 and calls[0] == calls[1]  # the same function on the same kind of model

    results = tmp_path / "results"
    base, full = (json.loads((results / f"{n}.json").read_text()) for n in ("base", "full-s0"))
    for r in (base, full):
        e = r["exact_match"]
        assert e["records"] == 5 and len(e["per_example_correct"]) == 5 and len(e["answers"]) == 5
        assert sum(e["per_task"][t]["records"] for t in e["per_task"]) == 5
        assert r["heldout"]["records"] == 5 and r["wall_time_s"]["eval_exact_match"] > 0
    assert full["exact_match"]["accuracy"] == 1.0 and full["exact_match"]["loaded"]["adapter"]
    assert base["exact_match"]["loaded"]["adapter"] is None

    # Rescoring the base model and the trained run directly gives the stored base answers,
    # and the stored run scored exactly as the scorer scores the references.
    monkeypatch.setattr(em, "greedy_answers", real)
    study = load_study(str(path))
    held = next((tmp_path / "runs" / "data").glob("*/heldout.json"))
    records = load_records(str(held))
    model, tokenizer, _ = load_for_eval(str(tiny_model_dir))
    again = em.exact_match(model, tokenizer, records, max_new_tokens=40, batch_size=2)
    assert again["answers"] == base["exact_match"]["answers"]
    assert again["per_example_correct"] == base["exact_match"]["per_example_correct"]
    trained, _, _ = load_for_eval(str(train_dir(study, study.cell("full-s0"))))
    assert em.exact_match(trained, tokenizer, records, max_new_tokens=40)["records"] == 5

    report = (tmp_path / "RESULTS.md").read_text()
    assert "| exact match | Δ EM vs base | 2 SE (EM) |" in report
    assert "| full-token | 1/1 |" in report and "100.0 |" in report
    assert "`shortanswer` generator" in report and "exact-match accuracy of greedy answers" in report
    assert "fine-tuning beats the base model** — **held**: Δ exact match (a − b) = +" in report

    # Finished: nothing reruns. A result recorded before exact match existed stays current
    # while it is off; turning it on makes the result stale, not silently reused.
    capsys.readouterr()
    assert main(["experiment", str(path)]) == 0 and "nothing to run" in capsys.readouterr().out
    old = dict(base)
    old["eval"] = {k: v for k, v in base["eval"].items() if not k.startswith("exact_match")}
    (results / "base.json").write_text(json.dumps(old))
    off = _config(tmp_path, tiny_model_dir, eval={"heldout": True, "batch_size": 5}, report={"path": str(tmp_path / "R2.md")})
    off["cells"] = config["cells"]
    path.write_text(yaml.safe_dump(off, sort_keys=False))
    assert main(["experiment", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"base\s+finished", out), out
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["experiment", str(path), "--dry-run"]) == 0
    assert re.search(r"base\s+stale", capsys.readouterr().out)


def test_accuracy_comparisons_count_higher_as_better():
    from tokenseek.experiment.report import verdict
    from tokenseek.experiment.stats import compare

    def row(correct_per_seed):
        done = [(None, {"exact_match": {"accuracy": sum(c) / len(c), "per_example_correct": c}}) for c in correct_per_seed]
        return {"label": "x", "cells": [None] * len(done), "done": done}

    good = row([[1, 1, 1, 1, 0, 1, 1, 1, 1, 1] * 4])
    bad = row([[0, 0, 1, 0, 0, 0, 0, 1, 0, 0] * 4])
    c = compare(good, bad, "exact_match")
    assert c["delta"] == pytest.approx(0.9 - 0.2) and 0 < c["example_se"] < 0.1
    assert verdict("beats", good, bad, "exact_match").startswith("**held**")
    assert verdict("beats", bad, good, "exact_match").startswith("**not held**")
    assert verdict("matches", good, bad, "exact_match").startswith("**held**")
    assert verdict("matches", bad, good, "exact_match").startswith("**not held**")
    # The paired SE with equal weights is the textbook sd(d)/sqrt(n).
    import statistics

    d = [x - y for x, y in zip(good["done"][0][1]["exact_match"]["per_example_correct"], bad["done"][0][1]["exact_match"]["per_example_correct"])]
    assert c["example_se"] == pytest.approx(statistics.stdev(d) / len(d) ** 0.5)


def test_generated_data_is_written_once_and_a_changed_generator_is_refused(tmp_path, monkeypatch):
    import tokenseek.data.generators as generators
    from tokenseek.experiment.data import sample_data

    study = parse_study(_config(tmp_path, "m"))
    meta = sample_data(study)
    train = json.loads(open(meta["train_file"]).read())
    held = json.loads(open(meta["heldout_file"]).read())
    assert (meta["train_records"], meta["heldout_records"]) == (12, 5)
    assert (train, held) == tuple(map(list, shortanswer_splits(12, 5, seed=0)))
    assert sample_data(study) == meta  # a second start reuses the files
    real = generators.generate_splits

    def changed(*args, **kwargs):
        tr, te = real(*args, **kwargs)
        return [{**tr[0], "output": tr[0]["output"] + "0"}] + tr[1:], te

    monkeypatch.setattr(generators, "generate_splits", changed)
    with pytest.raises(TokenSeekError, match="its code changed"):
        sample_data(study)


def test_ratio_sweep_rows_shared_by_both_selections_keep_every_target(tmp_path):
    """ratio_sweep.yaml trains one run per (ratio, seed) from 20 % on and shows it on both the random
    and the TokenSeek line: true only if every training example's budget covers all its targets,
    so that any ranking keeps the same positions. Checked on the study's own data."""
    from pathlib import Path

    import numpy as np

    from tokenseek.data import load_records, tokenize_records
    from tokenseek.experiment import load_study
    from tokenseek.models import load_tokenizer
    from tokenseek.seeking.select import select_keep

    study = load_study(Path(__file__).resolve().parent.parent / "experiments" / "ratio_sweep.yaml")
    shared = sorted({c.params["ratio"] for c in study.cells if c.label.startswith("every target")})
    assert shared == [0.2, 0.3, 0.5]
    train, _ = generate_splits(study.data["generator"], study.data["train"], study.data["test"], study.data["seed"])
    (tmp_path / "train.json").write_text(json.dumps(train))  # as the runner hands it to training
    p = study.defaults
    data = tokenize_records(load_records(str(tmp_path / "train.json")), load_tokenizer(p["model"]), template=p["template"], max_length=p["max_length"])
    rng = np.random.default_rng(0)
    for ratio in shared:
        for ex in data.examples[:: 7]:  # a seventh of them: the check is per example, the time is not
            n = len(ex["input_ids"])
            targets = np.array([label != -100 for label in ex["labels"][1:]] + [False])
            scores = {"context": rng.random(n) + 0.01, "gradient": rng.random(n)}
            random_keep = select_keep(n, ratio, "random", candidates=targets, seed=1, index=ex["index"])
            scored_keep = select_keep(n, ratio, "tokenseek", candidates=targets, **scores)
            assert (random_keep == targets).all() and (scored_keep == targets).all(), (ratio, ex["index"])
