"""The Trainer integration: accumulation and DDP-style normalisation, QLoRA safety, the train CLI."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import padded_batch, random_keep, tiny_model
from tokenseek.cli.main import main
from tokenseek.data import DitchingCollator
from tokenseek.errors import TokenSeekError


def _one_sgd_step(model, features, batch_size, grad_accum, tmp_path):
    from transformers import TrainingArguments

    from tokenseek.train import TokenSeekTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        max_steps=1, learning_rate=1.0, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[], use_cpu=True,
        remove_unused_columns=False, save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_drop_last=False,
    )
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainer = TokenSeekTrainer(model=model, args=args, train_dataset=features, data_collator=DitchingCollator(0))
    trainer.train()
    return {k: p.detach() - before[k] for k, p in model.named_parameters()}


def _features(n=4):
    input_ids, attention_mask, labels = padded_batch(seed=5, lengths=(19, 11, 16, 8)[:n])
    keep = random_keep(attention_mask, 0.4, seed=3)
    out = []
    for b in range(n):
        length = int(attention_mask[b].sum())
        out.append({"input_ids": input_ids[b, :length].tolist(), "labels": labels[b, :length].tolist(), "keep": keep[b, :length].tolist()})
    return out


def test_accumulation_equals_big_batch(tmp_path):
    features = _features(2)
    small = _one_sgd_step(tiny_model("llama"), features, 1, 2, tmp_path / "a")
    big = _one_sgd_step(tiny_model("llama"), features, 2, 1, tmp_path / "b")
    worst = max(float((small[k] - big[k]).abs().max() / big[k].abs().max().clamp(min=1e-12)) for k in big)
    assert any(big[k].abs().max() > 0 for k in big)
    assert worst <= 1e-5


def test_trainer_loss_matches_ditched_loss(tmp_path):
    from tokenseek import ditched_loss

    features = _features(2)
    batch = DitchingCollator(0)(features)
    model = tiny_model("llama")
    expected = ditched_loss(model, batch["input_ids"], batch["labels"], batch["keep"], batch["attention_mask"])
    model.zero_grad()
    update = _one_sgd_step(model, features, 2, 1, tmp_path)
    fresh = tiny_model("llama")
    ditched_loss(fresh, batch["input_ids"], batch["labels"], batch["keep"], batch["attention_mask"]).backward()
    for name, p in fresh.named_parameters():
        assert torch.allclose(update[name], -p.grad, rtol=1e-4, atol=1e-7), name
    assert expected.item() > 0


def test_qlora_gradients_survive_an_eval_pass(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from tokenseek import ditched_loss
    from tokenseek.models import apply_peft, load_model

    model, _ = load_model(str(tiny_model_dir), quantize="nf4")
    model = apply_peft(model, "qlora", dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.randint(0, 1000, (2, 24))
    keep = random_keep(torch.ones_like(ids), 0.5, seed=1)

    def lora_grads():
        model.train()
        ditched_loss(model, ids, ids, keep).backward()
        out = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    before = lora_grads()
    model.eval()
    with torch.no_grad():  # what generate() / lm-eval do; repacks 4-bit weights unless disabled
        model(input_ids=ids)
    after = lora_grads()
    assert before and before.keys() == after.keys()
    for k in before:
        assert torch.allclose(before[k], after[k], rtol=1e-5, atol=1e-8), k


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "/nonexistent/model"], "model path not found"),
        (["--data", "/nonexistent.json"], "data file not found"),
        (["--peft", "adapterx"], "unknown --peft"),
        (["--selection", "best"], "unknown --selection"),
        (["--ratio", "0"], "--ratio must be in (0, 1]"),
        (["--ratio", "1.5"], "--ratio must be in (0, 1]"),
    ],
)
def test_train_bad_input(tmp_path, capsys, data_file, extra, message):
    out = tmp_path / "run"
    argv = ["train", "--output-dir", str(out), "--data", str(data_file), "--selection", "random", *extra]
    code, err = _run(argv, capsys)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_train_bad_records(tmp_path, capsys, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    for path, message in [(empty, "is empty"), (missing, "no 'output' field")]:
        out = tmp_path / f"run-{path.stem}"
        code, err = _run(["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--data", str(path), "--selection", "random"], capsys)
        assert code == 2 and message in err, err
        assert not out.exists()


def test_train_cli_writes_a_run_and_refuses_another(tmp_path, capsys, caplog, tiny_model_dir, data_file):
    out = tmp_path / "run"
    base = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(out), "--max-steps", "3",
            "--grad-accum", "2", "--max-length", "64", "--save-steps", "2"]
    assert main(base + ["--selection", "tokenseek", "--ratio", "0.3", "--peft", "lora", "--select-from", "all"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["selection"] == "tokenseek"
    assert (summary["alpha"], summary["beta"]) == (1.0, 1.0)  # unset: the paper's weights when ranking every position
    assert "score weights α,β = 1,1 (--alpha and --beta: the default with --select-from all)" in caplog.text
    assert 0.25 < summary["kept_fraction"] < 0.45
    # Scoring (into OUTPUT_DIR/scores) and the training loop are timed apart, inside the run's wall time.
    assert 0 < summary["scoring_wall_time_s"] and 0 < summary["train_runtime_s"]
    assert summary["scoring_wall_time_s"] + summary["train_runtime_s"] <= summary["wall_time_s"]
    assert (out / "model" / "adapter_config.json").is_file()
    assert json.loads((out / "loss_curve.json").read_text())
    capsys.readouterr()
    code, err = _run(base + ["--selection", "random"], capsys)
    assert code == 2 and "holds a different run" in err


@pytest.mark.parametrize("selection", ["random", "first", "tokenseek"])
def test_targets_first_trains_every_target_and_spends_the_whole_budget(tmp_path, tiny_model_dir, data_file, selection):
    """--select-from targets-first keeps what targets keeps plus the rest of the budget; all keeps the budget too
    but not every target."""
    summaries = {}
    for select_from in ("targets", "targets-first", "all"):
        out = tmp_path / f"{selection}-{select_from}"
        argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(out), "--max-steps", "1",
                "--grad-accum", "1", "--max-length", "48", "--selection", selection, "--ratio", "0.3", "--select-from", select_from]
        assert main(argv) == 0
        summaries[select_from] = json.loads((out / "train_summary.json").read_text())
    targets, first, every = summaries["targets"], summaries["targets-first"], summaries["all"]
    assert first["select_from"] == "targets-first"
    # Unset weights are recorded as used: context alone when ranking targets, the paper's (1, 1) over every position.
    assert [(s["alpha"], s["beta"]) for s in (targets, first, every)] == [(1.0, 0.0), (1.0, 0.0), (1.0, 1.0)]
    assert targets["kept_target_share"] == first["kept_target_share"] == 1.0  # the answers are 2 tokens: the budget covers them
    assert first["tokens_kept"] == every["tokens_kept"] > targets["tokens_kept"]  # ceil(0.3 n) per example, like the paper's rule
    assert every["kept_target_share"] < 1.0


def test_peft_args_reach_the_adapter_config(tmp_path, tiny_model_dir, data_file):
    """--peft-arg (and a YAML peft_args: block) set fields of the peft config the run trains and saves."""
    import math

    import peft

    base = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--max-steps", "1", "--grad-accum", "1",
            "--max-length", "48", "--selection", "random", "--ratio", "0.5", "--lora-r", "4", "--lora-alpha", "8",
            "--target-modules", "q_proj,v_proj"]  # peft takes layers_to_transform with a list of modules only
    assert main([*base, "--output-dir", str(tmp_path / "flag"), "--peft-arg", "use_rslora=true", "--peft-arg", "layers_to_transform=[1]"]) == 0
    config = tmp_path / "train.yaml"
    config.write_text("peft_args:\n  use_rslora: true\n  layers_to_transform: [1]\n")
    assert main([*base, "--output-dir", str(tmp_path / "yaml"), "--config", str(config)]) == 0
    for run in ("flag", "yaml"):
        saved = json.loads((tmp_path / run / "model" / "adapter_config.json").read_text())
        assert saved["use_rslora"] is True and saved["layers_to_transform"] == [1]
        model = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / run / "model")
        layers = {name: m for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
        assert layers and all(".layers.1." in name for name in layers)  # layer 0 got no adapter
        # rsLoRA scales by alpha / sqrt(r) instead of alpha / r.
        assert all(m.scaling["default"] == pytest.approx(8 / math.sqrt(4)) for m in layers.values())


def test_peft_config_file_trains_the_adapter_it_describes(tmp_path, tiny_model_dir, data_file):
    """--peft-config: the run saves an adapter config equal to the given one on every setting,
    and a rerun of the same command resumes (its identity holds the file's settings)."""
    import peft

    given = tmp_path / "given"
    peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=12, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], use_rslora=True).save_pretrained(given)
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(out), "--max-steps", "1",
            "--grad-accum", "1", "--max-length", "48", "--selection", "random", "--ratio", "0.5", "--peft-config", str(given)]
    assert main(argv) == 0
    mine, theirs = (json.loads((folder / "adapter_config.json").read_text()) for folder in (out / "model", given))
    skip = {"base_model_name_or_path", "revision", "inference_mode", "peft_version", "target_modules"}
    assert {k: v for k, v in mine.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    assert sorted(mine["target_modules"]) == sorted(theirs["target_modules"])
    assert main(argv) == 0  # the same command again: the finished run is recognised, not refused as another run


@pytest.mark.parametrize("peft_method", ["none", "loha", "lokr", "ia3"])
def test_train_cli_peft_methods(tmp_path, tiny_model_dir, data_file, peft_method):
    """The CLI trains and saves each method; their ditched gradients are checked against the
    reference in test_ditching.py::test_other_adapter_gradients_match_reference."""
    out = tmp_path / peft_method
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(out), "--max-steps", "2",
            "--grad-accum", "1", "--max-length", "48", "--selection", "random", "--ratio", "0.5", "--peft", peft_method]
    assert main(argv) == 0
    assert json.loads((out / "train_summary.json").read_text())["peft"] == peft_method
    if peft_method == "none":
        assert (out / "model" / "model.safetensors").is_file()
    else:
        assert json.loads((out / "model" / "adapter_config.json").read_text())["peft_type"] == peft_method.upper()


def test_train_cli_gradient_checkpointing_reaches_the_kept_pass(tmp_path, tiny_model_dir, data_file, monkeypatch):
    """--gradient-checkpointing turns on the layers' checkpointing through the Trainer (under
    whichever name this transformers version takes) and the ditched kept pass runs under it."""
    import tokenseek.ditching.forward as forward
    from tokenseek.models.introspect import decoder_layers

    seen, original = [], forward.checkpointing_for_kept_pass

    def spy(model):
        seen.append(sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in decoder_layers(model)))
        return original(model)

    monkeypatch.setattr(forward, "checkpointing_for_kept_pass", spy)
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
            "--grad-accum", "1", "--max-length", "48", "--selection", "random", "--ratio", "0.5", "--gradient-checkpointing"]
    assert main(argv) == 0
    assert seen and all(n > 0 for n in seen)


def test_train_cli_context_chunk_reaches_the_context_pass(tmp_path, tiny_model_dir, data_file, monkeypatch):
    """--context-chunk sets the pieces of the ditched step's context pass (unset: the device's default)."""
    import tokenseek.ditching.forward as forward

    chunks, original = [], forward.context_pass

    def spy(*args, chunk=None, **kwargs):
        chunks.append(chunk)
        return original(*args, chunk=chunk, **kwargs)

    monkeypatch.setattr(forward, "context_pass", spy)
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--max-steps", "1", "--grad-accum", "1",
            "--max-length", "48", "--selection", "random", "--ratio", "0.5"]
    assert main([*argv, "--output-dir", str(tmp_path / "a"), "--context-chunk", "7"]) == 0
    assert chunks and set(chunks) == {7}
    chunks.clear()
    assert main([*argv, "--output-dir", str(tmp_path / "b")]) == 0
    assert chunks and set(chunks) == {None}  # context_pass then takes forward.context_chunk(device)


def test_yaml_config(tmp_path, tiny_model_dir, data_file):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {data_file}\nmax_steps: 1\ngrad_accum: 1\nselection: random\nratio: 0.5\nmax_length: 48\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--output-dir", str(out)]) == 0
    assert json.loads((out / "train_summary.json").read_text())["ratio"] == 0.5


@pytest.mark.slow
def test_default_training_loss_falls(tmp_path):
    """`tokenseek train` on the built-in data with the default model: the loss goes down."""
    out = tmp_path / "run"
    argv = ["train", "--output-dir", str(out), "--limit", "40", "--max-steps", "10", "--grad-accum", "2",
            "--ratio", "0.5", "--lr", "2e-3", "--logging-steps", "1", "--max-length", "80"]
    assert main(argv) == 0
    curve = [p["loss"] for p in json.loads((out / "loss_curve.json").read_text())]
    assert len(curve) == 10
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve


def test_memory_budget_run_resumes_with_its_ratio(tmp_path, tiny_model_dir, data_file, monkeypatch):
    """Regression: the identity was recorded after --memory-budget resolved the ratio, so a rerun was refused."""
    import tokenseek.bench.planner as planner

    measured = iter([0.5, 0.4])  # a re-measurement may differ: the resumed run must keep its first ratio
    monkeypatch.setattr(planner, "ratio_for_budget", lambda cfg, seq: next(measured))
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(out), "--max-steps", "2",
            "--grad-accum", "1", "--max-length", "48", "--selection", "random", "--memory-budget", "2GiB", "--save-steps", "1"]
    assert main(argv) == 0
    assert json.loads((out / "train_summary.json").read_text())["ratio"] == 0.5
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] and summary["ratio"] == 0.5


# ----------------------------------------------------------------------------- drop-in for Trainer users
def _user_dataset(tokenizer, n: int = 8):
    """What a Trainer user has: tokenised examples, labels -100 on the prompt (no tokenseek helper)."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        prompt = tokenizer(f"Question {i}: what is {i} plus {i}? Answer:")["input_ids"]
        answer = tokenizer(f" {2 * i}, because {i} + {i} = {2 * i}.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return Dataset.from_list(rows)


def _user_trainer(tmp_path, tiny_model_dir, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from tokenseek.train import TokenSeekTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    return TokenSeekTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, train_dataset=_user_dataset(tokenizer),
        processing_class=tokenizer, **kwargs,
    )


def test_trainer_drop_in_random_selection_trains_with_the_ditched_loss(tmp_path, tiny_model_dir, monkeypatch):
    from trainer_checks import check_keep, spy_on_loss

    trainer = _user_trainer(tmp_path, tiny_model_dir, ratio=0.3)  # no collator given: DitchingCollator pads
    seen = spy_on_loss(trainer, monkeypatch)
    trainer.train()
    assert len(seen) == 4  # 2 steps x 2 accumulated micro-batches
    for window in (seen[0:2], seen[2:4]):
        counts = [int((w["inputs"]["shift_labels"] != -100).sum()) for w in window]
        assert int(window[0]["num_items"]) == sum(counts)
        for w, count in zip(window, counts):
            check_keep(w["inputs"], 0.3)
            assert w["ditched_forwards"] == 1
            torch.testing.assert_close(w["loss"] * w["num_items"], w["reference"] * count, rtol=1e-5, atol=1e-5)


def test_trainer_drop_in_context_chunk_reaches_the_context_pass(tmp_path, tiny_model_dir, monkeypatch):
    """context_chunk= among the trainer's selection keywords sets the context pass's pieces."""
    import tokenseek.ditching.forward as forward

    chunks, original = [], forward.context_pass

    def spy(*args, chunk=None, **kwargs):
        chunks.append(chunk)
        return original(*args, chunk=chunk, **kwargs)

    monkeypatch.setattr(forward, "context_pass", spy)
    trainer = _user_trainer(tmp_path, tiny_model_dir, ratio=0.3, context_chunk=5)
    assert trainer.step_options.context_chunk == 5
    trainer.train()
    assert chunks and set(chunks) == {5}


def test_trainer_drop_in_scored_and_online_selection(tmp_path, tiny_model_dir):
    from trainer_checks import check_stored_keep

    trainer = _user_trainer(tmp_path, tiny_model_dir, selection="tokenseek", ratio=0.3, scores=tmp_path / "scores")
    assert (tmp_path / "scores" / "scores.parquet").is_file()
    check_stored_keep(trainer, 0.3)

    online = _user_trainer(tmp_path, tiny_model_dir, selection="tokenseek", seeking="online", ratio=0.3, beta=0.0)
    assert online.offline_keep is None and online.step_options.online.beta == 0.0
    online.train()
    assert online.online_tally.examples == 8 and online.online_tally.kept_targets > 0


def test_trainer_drop_in_scores_nothing_when_every_budget_covers_the_targets(tmp_path, tiny_model_dir):
    """ratio 1.0 among targets keeps every target whatever the scores: no store is made, training runs."""
    trainer = _user_trainer(tmp_path, tiny_model_dir, selection="tokenseek", ratio=1.0, scores=tmp_path / "scores")
    assert not (tmp_path / "scores").exists() and trainer.offline_keep.scores is None
    batch = next(iter(trainer.get_train_dataloader()))
    targets = torch.zeros_like(batch["keep"])
    targets[:, :-1] = batch["labels"][:, 1:] != -100  # position p is a candidate when token p+1 is a target
    assert torch.equal(batch["keep"], targets)
    trainer.train()


def test_trainer_drop_in_bad_keywords_are_one_line_errors(tmp_path, tiny_model_dir):
    from tokenseek.train.trainer import StepOptions

    for kwargs, message in [
        ({"selection": "tokenseek"}, "needs token scores: pass scores=DIR"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": 0.1, "step": StepOptions()}, "either selection keywords"),
    ]:
        with pytest.raises(TokenSeekError, match=message):
            _user_trainer(tmp_path, tiny_model_dir, **kwargs)
