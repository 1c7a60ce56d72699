"""Reliability at the edges: bad input, interruption and resume, determinism, data parallelism, odd inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tokenseek.cli.main import main


def _train_argv(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--max-length", "64", *extra]


def _err(capsys):
    return capsys.readouterr().err.strip()


# --- bad input (train / score rows of docs/RELIABILITY.md; eval, bench and visualize rows live in their own tests) ---

def test_directory_that_is_not_a_model(tmp_path, capsys, data_file):
    (tmp_path / "not_a_model").mkdir()
    assert main(_train_argv(tmp_path / "not_a_model", data_file, tmp_path / "run")) == 2
    assert "without config.json" in _err(capsys)
    assert not (tmp_path / "run").exists()


def test_gguf_that_is_not_a_causal_lm(tmp_path, capsys, data_file, monkeypatch):
    monkeypatch.setenv("TOKENSEEK_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    assert main(_train_argv(fake, data_file, tmp_path / "run")) == 2
    err = _err(capsys)
    assert "could not be loaded as a causal language model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists() and not list((tmp_path / "cache").glob("gguf/*"))


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', "malformed JSON on line 2"),
        ("bad.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', "malformed JSON at line 2"),
        ("list.jsonl", '{"instruction": "a", "output": "b"}\n[1, 2]\n', "line 2 is not a JSON object"),
        ("data.txt", "hello", "unsupported data file"),
    ],
)
def test_malformed_data_reports_the_line(tmp_path, capsys, tiny_model_dir, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert main(_train_argv(tiny_model_dir, path, tmp_path / "run", "--selection", "random")) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "run").exists()


def test_field_mapping_errors(tmp_path, capsys, tiny_model_dir, data_file):
    assert main(_train_argv(tiny_model_dir, data_file, tmp_path / "r1", "--fields", "output=answer")) == 2
    assert "no 'answer' column" in _err(capsys)
    assert main(_train_argv(tiny_model_dir, data_file, tmp_path / "r2", "--fields", "response=output")) == 2
    assert "--fields names ['response']" in _err(capsys)


def test_truncation_and_unlearnable_examples_are_counted(tmp_path, capsys, tiny_model_dir):
    records = [{"instruction": "Repeat the word. " * 40, "input": "", "output": "word"}]  # prompt alone > max length
    records += [{"instruction": "Say yes.", "input": "", "output": "yes " * 100}]  # response cut
    records += [{"instruction": "Say no.", "input": "", "output": "no"}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "run"
    assert main(_train_argv(tiny_model_dir, path, out, "--selection", "random", "--max-steps", "1", "--grad-accum", "1")) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["truncated_examples"] == 2 and summary["dropped_examples"] == 1 and summary["examples"] == 2
    only_long = tmp_path / "long.json"
    only_long.write_text(json.dumps(records[:1]))
    assert main(_train_argv(tiny_model_dir, only_long, tmp_path / "run2", "--selection", "random")) == 2
    assert "no example has a response token left within --max-length 64" in _err(capsys)


def test_options_without_effect_are_warned_about(tmp_path, caplog, tiny_model_dir, data_file):
    argv = _train_argv(tiny_model_dir, data_file, tmp_path / "run", "--selection", "random", "--alpha", "2", "--max-steps", "1", "--grad-accum", "1")
    assert main(argv) == 0
    assert "--alpha 2.0 has no effect: random selection fixes its own score weights" in caplog.text


def test_alpha_beta_zero_refused(tmp_path, capsys, tiny_model_dir, data_file):
    assert main(_train_argv(tiny_model_dir, data_file, tmp_path / "run", "--alpha", "0", "--beta", "0")) == 2
    assert "both 0" in _err(capsys)
    # Ranking targets, an unset --beta is 0: the error says so.
    assert main(_train_argv(tiny_model_dir, data_file, tmp_path / "run", "--alpha", "0")) == 2
    assert "both 0 (--beta unset: 0 by default with --select-from targets)" in _err(capsys)
    assert not (tmp_path / "run").exists()


def test_score_store_with_nan_is_refused(tmp_path, capsys, tiny_model_dir, data_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = tmp_path / "scores"
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data_file), "--out", str(store), "--max-length", "64"]) == 0
    table = pq.read_table(store / "scores.parquet")
    context = table.column("context").to_pylist()
    context[0][1] = float("nan")
    pq.write_table(table.set_column(1, "context", pa.array(context, pa.list_(pa.float32()))), store / "scores.parquet")
    capsys.readouterr()
    # Over all positions, so that the scores are read (among the short answers nothing is ranked).
    assert main(_train_argv(tiny_model_dir, data_file, tmp_path / "run", "--scores", str(store), "--select-from", "all")) == 2
    assert "NaN or infinite" in _err(capsys)


def test_out_of_memory_is_one_line(tmp_path, capsys, tiny_model_dir, data_file, monkeypatch):
    import tokenseek.train.recipe as recipe

    def oom(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(recipe, "run_train", oom)
    assert main(_train_argv(tiny_model_dir, data_file, tmp_path / "run")) == 3
    err = _err(capsys)
    assert "out of memory" in err and "tokenseek plan" in err and len(err.splitlines()) == 1


def test_output_dir_with_other_content_refused(tmp_path, capsys, tiny_model_dir, data_file):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_train_argv(tiny_model_dir, data_file, out)) == 2
    assert "holds no tokenseek run" in _err(capsys)
    assert (out / "notes.txt").read_text() == "mine"


# --- interruption ---

def test_train_resumes_after_kill_9(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tokenseek", *_train_argv(tiny_model_dir, data_file, out, "--selection", "random", "--ratio", "0.5",
           "--max-steps", "40", "--grad-accum", "1", "--save-steps", "5", "--peft", "none")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((out / "checkpoints").glob("checkpoint-10")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train_summary.json").exists(), "the kill did not land mid-run"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] and "checkpoint-" in summary["resumed_from"]
    steps = [p["step"] for p in json.loads((out / "loss_curve.json").read_text())]
    assert steps == list(range(1, 41))  # the curve continues where the checkpoint left it


# --- determinism ---

def test_same_seed_same_run(tmp_path, tiny_model_dir, data_file):
    curves, stores = [], []
    for name in ("a", "b"):
        out = tmp_path / name
        # Loss on every token: among the one- or two-token answers alone there would be nothing to rank or score.
        argv = _train_argv(tiny_model_dir, data_file, out, "--selection", "tokenseek", "--train-on-prompt", "--max-steps", "4",
                           "--grad-accum", "2", "--seed", "7")
        assert main(argv) == 0
        curves.append([p["loss"] for p in json.loads((out / "loss_curve.json").read_text())])
        stores.append((out / "scores" / "scores.parquet").read_bytes())
    assert curves[0] == curves[1] and len(curves[0]) == 4
    assert stores[0] == stores[1]
    # Only the seed differs (same strategy, same everything else): adapter init and data order change.
    out = tmp_path / "c"
    assert main(_train_argv(tiny_model_dir, data_file, out, "--selection", "tokenseek", "--train-on-prompt", "--max-steps", "4",
                            "--grad-accum", "2", "--seed", "8")) == 0
    assert [p["loss"] for p in json.loads((out / "loss_curve.json").read_text())] != curves[0]


# --- data parallel ---

def _final_weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def test_ddp_two_processes_equal_one_process_big_batch(tmp_path, tiny_model_dir):
    data = tmp_path / "two.json"
    data.write_text(json.dumps([
        {"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky on a clear day."},
        {"instruction": "Add 2 and 3.", "input": "numbers", "output": "5"},
    ]))
    common = ["--selection", "random", "--ratio", "0.5", "--peft", "none", "--max-steps", "1", "--optim", "sgd",
              "--lr", "0.5", "--max-grad-norm", "0", "--scheduler", "constant", "--warmup-ratio", "0"]
    single = tmp_path / "single"
    assert main(_train_argv(tiny_model_dir, data, single, "--batch-size", "2", "--grad-accum", "1", *common)) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "tokenseek",
           *_train_argv(tiny_model_dir, data, ddp, "--batch-size", "1", "--grad-accum", "1", *common)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    a, b = _final_weights(single), _final_weights(ddp)
    moved = [k for k in base if not torch.equal(a[k], base[k])]
    assert moved, "training changed nothing"
    for k in moved:
        update_a, update_b = a[k] - base[k], b[k] - base[k]
        assert (update_a - update_b).abs().max() <= 1e-5 * update_a.abs().max().clamp(min=1e-12) + 1e-7, k


def test_scoring_shards_across_processes(tmp_path, tiny_model_dir, data_file):
    single = tmp_path / "single"
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data_file), "--out", str(single), "--max-length", "64"]) == 0
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534", "-m", "tokenseek", "score",
           "--model", str(tiny_model_dir), "--data", str(data_file), "--out", str(sharded), "--max-length", "64"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import pyarrow.parquet as pq

    a, b = pq.read_table(single / "scores.parquet").to_pydict(), pq.read_table(sharded / "scores.parquet").to_pydict()
    assert a["index"] == b["index"] == list(range(24))
    assert a["keep"] == b["keep"]
    for key in ("context", "gradient"):  # 1 vs 2 threads: same values up to summation order
        for x, y in zip(a[key], b[key]):
            assert torch.allclose(torch.tensor(x), torch.tensor(y), rtol=1e-5, atol=1e-7)


# --- long and odd inputs ---

def test_long_and_odd_inputs(tmp_path, tiny_model_dir):
    records = [
        {"instruction": "Continue the text.", "input": "", "output": "lorem ipsum " * 2100},  # ~4096 tokens after truncation
        {"instruction": "Hi", "input": "", "output": "ok"},  # ~10 tokens, batched with a ~2000-token one
        {"instruction": "Write a long story.", "input": "", "output": "once upon a time " * 500},
        {"instruction": "Réponds en français, s'il te plaît : quelle est la capitale du Japon ? 東京", "input": "日本", "output": "Tōkyō — 東京 ✓"},
        {"instruction": "Answer with one token.", "input": "", "output": "4"},  # single-token response (+ EOS)
    ]
    data = tmp_path / "odd.json"
    data.write_text(json.dumps(records, ensure_ascii=False))
    store = tmp_path / "scores"
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(store), "--max-length", "4096", "--batch-size", "2"]) == 0
    out = tmp_path / "run"
    argv = _train_argv(tiny_model_dir, data, out, "--max-length", "4096", "--scores", str(store), "--batch-size", "2", "--grad-accum", "1")
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["examples"] == 5 and summary["truncated_examples"] == 1
    assert summary["final_loss"] is not None and summary["steps"] == 3
