"""Tracking and evaluation during training: --report-to, --eval-steps, --load-best-model-at-end."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tokenseek.cli.main import main


def _train(tiny_model_dir, data_file, out, *extra):
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(out), "--grad-accum", "1",
            "--max-length", "48", "--selection", "random", "--ratio", "0.3", "--peft", "none", "--heldout", "4", *extra]
    assert main(argv) == 0
    return json.loads((out / "train_summary.json").read_text())


def _full_token_loss(model_dir, heldout_records):
    """Held-out loss computed by the plain HF model and its own loss (no tokenseek code in the loss)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenseek.data import tokenize_records

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    examples = tokenize_records(heldout_records, tokenizer, template="alpaca", max_length=48).examples
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in examples])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples])
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def test_eval_steps_report_the_full_token_heldout_loss(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    summary = _train(tiny_model_dir, data_file, out, "--max-steps", "2", "--eval-steps", "1", "--lr", "0.01")
    evals = json.loads((out / "eval_curve.json").read_text())
    assert [e["step"] for e in evals] == [1, 2]
    # One evaluation batch (4 held-out records, eval batch 8): the Trainer's eval_loss must be the
    # plain model's full-token mean on those records; a ditched (30 %) loss would differ.
    expected = _full_token_loss(out / "model", json.loads((out / "heldout.json").read_text()))
    assert abs(summary["final_eval_loss"] - expected) <= 1e-4 * expected
    assert summary["eval_examples"] == 4


def test_report_to_tensorboard_writes_events(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    _train(tiny_model_dir, data_file, out, "--max-steps", "2", "--report-to", "tensorboard")
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and any(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert "train/loss" in acc.Tags()["scalars"]


def test_best_checkpoint_is_the_final_model(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    summary = _train(tiny_model_dir, data_file, out, "--max-steps", "3", "--eval-steps", "1", "--save-steps", "1",
                     "--load-best-model-at-end", "--lr", "0.5", "--scheduler", "constant", "--warmup-ratio", "0")
    evals = json.loads((out / "eval_curve.json").read_text())
    best_step = min(evals, key=lambda e: e["eval_loss"])["step"]
    assert best_step < 3, evals  # lr 0.5 overshoots: the last checkpoint is not the best, so keeping it would fail
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    final = load_file(str(out / "model" / "model.safetensors"))
    best = load_file(str(out / "checkpoints" / f"checkpoint-{best_step}" / "model.safetensors"))
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in final)
    last = load_file(str(out / "checkpoints" / "checkpoint-3" / "model.safetensors"))
    assert any(not torch.equal(final[k], last[k]) for k in final)


def test_eval_split_file(tmp_path, tiny_model_dir, data_file):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps([{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("yes", "no", "maybe")]))
    out = tmp_path / "run"
    summary = _train(tiny_model_dir, data_file, out, "--max-steps", "1", "--eval-steps", "1", "--eval-split", str(evaluation))
    assert summary["eval_examples"] == 3 and summary["heldout_examples"] == 4
    assert summary["final_eval_loss"] == json.loads((out / "eval_curve.json").read_text())[-1]["eval_loss"]
