"""TRL integration: SFTTrainer's own tokenised, collated batches, trained with the ditched loss."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional extra (pip install 'tokenseek[trl]'; the dev extra installs it)")

from tokenseek import ditched_loss  # noqa: E402
from tokenseek.errors import TokenSeekError  # noqa: E402
from tokenseek.seeking.select import target_positions  # noqa: E402
from trainer_checks import check_keep as _check_keep, check_stored_keep, spy_on_loss as _spy_on_loss  # noqa: E402

PROMPTS = [{"prompt": f"Question {i}: what is {i} plus {i}? Answer:", "completion": f" {2 * i}, because {i} + {i} = {2 * i}."} for i in range(8)]


def _config(tmp_path, **overrides):
    from trl import SFTConfig

    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        activation_checkpointing=False, max_length=64, disable_tqdm=True, seed=0,
    )
    return SFTConfig(**(settings | overrides))


def _trainer(tmp_path, tiny_model_dir, dataset_rows=PROMPTS, *, config=None, tokenizer=None, **kwargs):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenseek.integrations.trl import TokenSeekSFTTrainer

    return TokenSeekSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=config or _config(tmp_path),
        train_dataset=Dataset.from_list(dataset_rows),
        processing_class=tokenizer or AutoTokenizer.from_pretrained(tiny_model_dir),
        **kwargs,
    )


def test_trl_trains_with_the_ditched_loss_on_its_own_batches(tmp_path, tiny_model_dir, monkeypatch):
    trainer = _trainer(tmp_path, tiny_model_dir, ratio=0.3)
    seen = _spy_on_loss(trainer, monkeypatch)
    trainer.train()
    assert trainer.state.global_step == 3 and len(seen) == 6  # 3 steps x 2 accumulated micro-batches
    for window in (seen[0:2], seen[2:4], seen[4:6]):
        counts = [int((w["inputs"]["shift_labels"] != -100).sum()) for w in window]
        assert int(window[0]["num_items"]) == sum(counts)  # the Trainer counted the kept targets of the window
        for w, count in zip(window, counts):
            # TRL masked the prompt (completion_mask -> -100), and the loss is the ditched loss of this batch,
            # scaled to a mean over the whole accumulation window.
            assert (w["inputs"]["labels"][w["inputs"]["attention_mask"].bool()] == -100).any()
            _check_keep(w["inputs"], 0.3)
            assert w["ditched_forwards"] == 1
            torch.testing.assert_close(w["loss"] * w["num_items"], w["reference"] * count, rtol=1e-5, atol=1e-5)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_the_same_example_keeps_the_same_tokens_every_time(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, ratio=0.3)
    first = next(iter(trainer.get_train_dataloader()))
    again = trainer.offline_keep(first)
    assert torch.equal(first["keep"], again)


def test_conversations_with_assistant_masks(tmp_path, tiny_model_dir, monkeypatch):
    from conversations import CONVERSATION, MARKED_TEMPLATE
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = MARKED_TEMPLATE  # TRL's assistant_only_loss needs {% generation %} markers
    config = _config(tmp_path, assistant_only_loss=True, max_steps=1, gradient_accumulation_steps=1, max_length=256)
    trainer = _trainer(tmp_path, tiny_model_dir, [{"messages": CONVERSATION}] * 4, config=config, tokenizer=tokenizer, ratio=0.5)
    seen = _spy_on_loss(trainer, monkeypatch)
    trainer.train()
    inputs = seen[0]["inputs"]
    labelled = inputs["labels"][0][inputs["labels"][0] != -100]
    replies = "".join(f"{m['content']}<|im_end|>\n" for m in CONVERSATION if m["role"] == "assistant")
    assert tokenizer.decode(labelled) == replies  # TRL's assistant_masks became the labels
    _check_keep(inputs, 0.5)
    assert seen[0]["ditched_forwards"] == 1
    torch.testing.assert_close(seen[0]["loss"], seen[0]["reference"], rtol=1e-5, atol=1e-5)


def test_scored_selection_from_a_store(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, selection="tokenseek", ratio=0.3, scores=tmp_path / "scores")
    assert (tmp_path / "scores" / "scores.parquet").is_file()
    check_stored_keep(trainer, 0.3)
    # A second trainer reuses the store instead of re-scoring.
    mtime = (tmp_path / "scores" / "scores.parquet").stat().st_mtime
    _trainer(tmp_path, tiny_model_dir, selection="tokenseek", ratio=0.3, scores=tmp_path / "scores")
    assert (tmp_path / "scores" / "scores.parquet").stat().st_mtime == mtime


def test_online_seeking_chooses_the_keep_mask_in_the_step(tmp_path, tiny_model_dir):
    chosen = []
    config = _config(tmp_path, max_steps=2, gradient_accumulation_steps=1)
    trainer = _trainer(tmp_path, tiny_model_dir, config=config, selection="tokenseek", seeking="online", ratio=0.3)
    import dataclasses

    from tokenseek.seeking.online import OnlineSeeker

    class Spy(OnlineSeeker):
        def __call__(self, model, input_ids, labels, attention_mask, indices=None):  # the weights this step's loss sees
            assert model.training
            keep, cache, scores = super().__call__(model, input_ids, labels, attention_mask, indices)
            assert not (keep & ~torch.from_numpy(_targets(labels, attention_mask))).any()  # targets only
            with torch.no_grad():
                chosen.append(ditched_loss(model, input_ids, labels, keep, attention_mask))
            return keep, cache, scores

    trainer.step_options.online = Spy(**dataclasses.asdict(trainer.step_options.online))
    losses, compute_loss = [], trainer.compute_loss
    trainer.compute_loss = lambda *a, **k: losses.append(compute_loss(*a, **k)) or losses[-1]
    trainer.train()
    assert len(chosen) == len(losses) == 2
    for loss, reference in zip(losses, chosen):
        torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-5)


def _targets(labels, attention_mask):
    import numpy as np

    out = np.zeros(tuple(labels.shape), dtype=bool)
    for row in range(labels.shape[0]):
        real = attention_mask[row].bool()
        out[row, real.numpy()] = target_positions(labels[row][real].numpy())
    return out


def test_trl_default_gradient_checkpointing_trains_with_the_ditched_loss(tmp_path, tiny_model_dir, monkeypatch):
    config = _config(tmp_path, activation_checkpointing=True, max_steps=2)
    trainer = _trainer(tmp_path, tiny_model_dir, config=config, ratio=0.5)
    seen = _spy_on_loss(trainer, monkeypatch)
    trainer.train()
    assert seen and all(s["ditched_forwards"] == 1 for s in seen)
    for s in seen:
        torch.testing.assert_close(s["loss"] * s["num_items"], s["reference"] * (s["inputs"]["shift_labels"] != -100).sum(), rtol=1e-4, atol=1e-5)


def test_settings_ditching_cannot_use_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(TokenSeekError, match="padding_free=False"):
        _trainer(tmp_path, tiny_model_dir, config=_config(tmp_path, padding_free=True, max_length=None))
    with pytest.raises(TokenSeekError, match="needs token scores"):
        _trainer(tmp_path, tiny_model_dir, selection="tokenseek")


def test_evaluation_is_trls_full_token_loss(tmp_path, tiny_model_dir):
    from datasets import Dataset

    config = _config(tmp_path, per_device_eval_batch_size=2)
    trainer = _trainer(tmp_path, tiny_model_dir, config=config, eval_dataset=Dataset.from_list(PROMPTS[:2]), ratio=0.3)
    batch = next(iter(trainer.get_eval_dataloader()))
    assert "keep" not in batch  # only training batches are ditched
    trainer.model.eval()
    with torch.no_grad():
        full = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    metrics = trainer.evaluate()
    assert abs(metrics["eval_loss"] - float(full)) < 1e-4
