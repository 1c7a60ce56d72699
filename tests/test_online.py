"""Target-aware selection, online seeking inside the step, loss normalisation, padding sides."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import padded_batch, tiny_model
from reference import grads, max_relative_error, reference_loss
from tokenseek.models.introspect import decoder_layers
from tokenseek.seeking import seek
from tokenseek.seeking.online import OnlineSeeker, online_scores
from tokenseek.seeking.seek import score_batch
from tokenseek.errors import TokenSeekError
from tokenseek.seeking.select import STRATEGIES, ranking_needed, select_keep, target_positions

ONLINE_ARCHS = ["llama", "qwen3", "gemma3_text", "gpt_neox", "mistral"]


# ----------------------------------------------------------------------------- --select-from
def test_all_mode_reproduces_the_masks_of_the_version_before_it():
    """Keep masks written by select.py before --select-from existed (tests/data, commit b787c10)."""
    cases = json.loads((Path(__file__).parent / "data" / "keep_masks_v0.json").read_text())["cases"]
    assert {c["s"] for c in cases} == set(STRATEGIES) - {"first", "context-residual"}  # these came later
    for c in cases:
        keep = select_keep(
            c["n"], c["r"], c["s"], context=np.array(c["c"]), gradient=np.array(c["g"]), alpha=c["a"], beta=c["b"], seed=c["seed"], index=c["i"]
        )
        assert np.flatnonzero(keep).tolist() == c["keep"], c["s"]


@pytest.mark.parametrize("strategy", ["random", "first", "tokenseek", "context", "context-residual", "gradient", "mixed", "probe"])
def test_targets_mode_keeps_only_target_positions(strategy):
    rng = np.random.default_rng(0)
    for length in (9, 40, 120):
        for prompt in (1, length // 2, length - 3):
            labels = np.array([-100] * prompt + list(range(length - prompt)))
            candidates = target_positions(labels)
            assert candidates.sum() == length - prompt
            keep = select_keep(
                length, 0.1, strategy, context=rng.random(length) + 0.01, gradient=rng.random(length), seed=1, index=length, candidates=candidates
            )
            assert not (keep & ~candidates).any()
            if strategy != "probe":
                # k = ceil(ratio * n) over all real tokens, capped at the number of targets.
                assert keep.sum() == min(math.ceil(0.1 * length), int(candidates.sum()))


def test_target_positions_are_the_positions_before_a_label():
    labels = [-100, -100, 5, 6, -100, 7]
    assert target_positions(labels).tolist() == [False, True, True, False, True, False]


def test_targets_mode_picks_the_best_scored_targets():
    context = np.array([9.0, 8, 7, 1, 2, 3, 0.5])  # prompt tokens score highest
    labels = np.array([-100, -100, -100, 1, 2, 3, 4])
    keep = select_keep(7, 0.3, "context", context=context, gradient=np.zeros(7), candidates=target_positions(labels))
    # Targets are positions 2..5 (their next token has a label); best by context: 2 (7.0), 5 (3.0), 4 (2.0).
    assert np.flatnonzero(keep).tolist() == [2, 4, 5]


# ----------------------------------------------------------------------------- padding side
def test_seek_selects_the_same_tokens_left_and_right_padded():
    model = tiny_model("llama").eval()
    right_ids, right_mask, right_labels = padded_batch(seed=3, lengths=(21, 9, 14))
    left_ids, left_mask, left_labels = (torch.zeros_like(t) for t in (right_ids, right_mask, right_labels))
    for b in range(right_ids.shape[0]):
        n = int(right_mask[b].sum())
        left_ids[b, -n:], left_mask[b, -n:], left_labels[b, -n:] = right_ids[b, :n], 1, right_labels[b, :n]
        left_labels[b, :-n] = -100
    for select_from in ("targets", "all"):
        right = seek(model, right_ids, right_labels, right_mask, ratio=0.3, select_from=select_from)
        left = seek(model, left_ids, left_labels, left_mask, ratio=0.3, select_from=select_from)
        for b in range(right_ids.shape[0]):
            n = int(right_mask[b].sum())
            assert right.keep[b, :n].tolist() == left.keep[b, -n:].tolist()
            assert torch.allclose(right.context[b, :n], left.context[b, -n:], atol=1e-5)
            assert torch.allclose(right.gradient[b, :n], left.gradient[b, -n:], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- online seeking
@pytest.mark.parametrize("arch", ONLINE_ARCHS)
@pytest.mark.parametrize("layers_back", [1, 2])
def test_online_scores_equal_offline_scores(arch, layers_back):
    model = tiny_model(arch).train()
    input_ids, attention_mask, labels = padded_batch(seed=4, lengths=(26, 11, 18))
    model.eval()
    offline_context, offline_gradient = score_batch(model, input_ids, labels, attention_mask, layers_back=layers_back)
    model.train()
    scores, _ = online_scores(model, input_ids, labels, attention_mask, layers_back=layers_back)
    assert model.training  # the context pass restores the mode
    assert torch.allclose(scores.context, offline_context, atol=1e-5)
    scale = offline_gradient.abs().max()
    assert float((scores.gradient - offline_gradient).abs().max() / scale) <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen2"])
def test_online_step_leaves_only_the_kept_pass_gradient(arch):
    """.grad after online scoring + kept pass equals the independent reference for the chosen keep mask."""
    from tokenseek.ditching.loss import ditched_loss_sums, kept_targets

    model = tiny_model(arch).eval()  # eval: no dropout, so the reference sees the same function
    input_ids, attention_mask, labels = padded_batch(seed=5, lengths=(30, 17, 24))
    seeker = OnlineSeeker(ratio=0.3)
    keep, cache, _ = seeker(model, input_ids, labels, attention_mask)
    assert all(p.grad is None for p in model.parameters())  # scoring touched no parameter
    sums = ditched_loss_sums(model, input_ids, kept_targets(labels, keep), keep, attention_mask, cache=cache)
    sums.token_mean().backward()
    online = grads(model)
    reference_loss(model, input_ids, attention_mask, labels, keep, decoder_layers(model)).backward()
    reference = grads(model)
    assert max_relative_error(online, reference) <= 1e-4


@pytest.mark.parametrize("select_from", ["targets", "targets-first", "all"])
def test_online_keep_equals_offline_selection_at_the_same_weights(select_from):
    model = tiny_model("qwen3").eval()
    input_ids, attention_mask, labels = padded_batch(seed=6, lengths=(40, 25))
    for b in range(2):  # a long prompt and a 3-token answer: the budget (8 and 5) exceeds the targets
        real = attention_mask[b].nonzero().flatten()
        labels[b, real[:-3]] = -100
    offline = seek(model, input_ids, labels, attention_mask, ratio=0.2, alpha=1, beta=1, select_from=select_from)
    keep, _, _ = OnlineSeeker(ratio=0.2, select_from=select_from)(model, input_ids, labels, attention_mask)
    assert torch.equal(keep, offline.keep)
    assert keep.sum(1).tolist() == ([3, 3] if select_from == "targets" else [8, 5])


@pytest.mark.parametrize("select_from", ["targets", "targets-first"])
def test_online_target_count_known_in_advance_is_the_kept_one(tmp_path, select_from):
    """The divisor counted before the step (Trainer.get_batch_samples) equals the number of
    targets the online selection then keeps: a budget above or below the targets."""
    from transformers import TrainingArguments

    from tokenseek.ditching.loss import kept_targets
    from tokenseek.train.trainer import StepOptions, TokenSeekTrainer

    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch(seed=6, lengths=(40, 25))
    short = labels.clone()
    short[0, attention_mask[0].nonzero().flatten()[:-3]] = -100  # row 0: 3 targets under a budget of 8; row 1: 21 over 5
    for ratio in (0.2, 0.05):
        seeker = OnlineSeeker(ratio=ratio, select_from=select_from)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        trainer = TokenSeekTrainer(model=model, args=args, step=StepOptions(online=seeker))
        assert trainer._count_in_advance
        keep, _, _ = seeker(model, input_ids, short, attention_mask)
        kept = int((kept_targets(short, keep) != -100).sum())
        assert trainer._items({"input_ids": input_ids, "attention_mask": attention_mask, "labels": short}) == kept, ratio


# ----------------------------------------------------------------------------- loss normalisation
def _trainer_loss(loss_norm: str, batch: dict, model) -> float:
    from transformers import TrainingArguments

    from tokenseek.train.trainer import StepOptions, TokenSeekTrainer

    args = TrainingArguments(output_dir="/tmp/unused-ts", use_cpu=True, report_to=[], per_device_train_batch_size=3)
    trainer = TokenSeekTrainer(model=model, args=args, step=StepOptions(loss_norm=loss_norm))
    model.train()
    items = trainer._items(batch)
    return float(trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(items)).detach())


def test_loss_norms_match_hand_computed_values():
    import torch.nn.functional as F

    from tokenseek.data import DitchingCollator

    model = tiny_model("llama").eval()
    for p in model.parameters():  # no dropout anywhere: the hand computation is a plain forward
        p.requires_grad_(True)
    ids, mask, labels = padded_batch(seed=7, lengths=(20, 12, 16))
    keeps = [[1 if i in (5, 9, 13) else 0 for i in range(20)], [1 if i in (2,) else 0 for i in range(12)], [1 if i in (6, 7) else 0 for i in range(16)]]
    # Example 1 keeps only position 2, whose next token (3) is prompt: no kept target.
    features = [
        {"input_ids": ids[b, : int(mask[b].sum())].tolist(), "labels": labels[b, : int(mask[b].sum())].tolist(), "keep": [bool(k) for k in keeps[b]]}
        for b in range(3)
    ]
    batch = DitchingCollator(0)(features)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_example = []
    for b in range(3):
        rows = [p for p in range(len(features[b]["input_ids"]) - 1) if keeps[b][p] and features[b]["labels"][p + 1] != -100]
        losses = [float(F.cross_entropy(logits[b, p], torch.tensor(features[b]["labels"][p + 1]))) for p in rows]
        per_example.append(losses)
    token_mean = sum(sum(l) for l in per_example) / sum(len(l) for l in per_example)
    example_mean = sum((sum(l) / len(l)) if l else 0.0 for l in per_example) / 3
    assert per_example[1] == []  # the case the example rule must count as 0, not NaN
    assert _trainer_loss("token", batch, model) == pytest.approx(token_mean, rel=1e-5)
    assert _trainer_loss("example", batch, model) == pytest.approx(example_mean, rel=1e-5)
    assert abs(token_mean - example_mean) > 1e-3  # the two rules differ on this batch


# ----------------------------------------------------------------------------- end to end
def _train(tmp_path, tiny_model_dir, *extra):
    from tokenseek.cli.main import main

    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--limit", "64", "--max-steps", "8",
            "--grad-accum", "2", "--batch-size", "2", "--lr", "1e-2", "--max-length", "96", "--selection", "tokenseek", *extra]
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    curve = [p["loss"] for p in json.loads((out / "loss_curve.json").read_text())]
    return summary, curve


def test_beta_zero_on_builtin_data_trains_with_targets_mode(tmp_path, tiny_model_dir):
    """Built-in examples are ~93 % prompt: context-only selection over all positions keeps almost no
    target; among targets it trains, and the summary says how much it trained on."""
    summary, curve = _train(tmp_path, tiny_model_dir, "--beta", "0", "--select-from", "targets")
    assert summary["select_from"] == "targets"
    assert summary["kept_targets"] > 0 and summary["examples_without_kept_target"] == 0
    assert summary["kept_targets"] == summary["tokens_kept"]  # every kept position carries the loss
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve


def test_online_seeking_trains_end_to_end(tmp_path, tiny_model_dir):
    # At 5 % about half the built-in examples have more targets than their budget: scored inside the step.
    summary, curve = _train(tmp_path, tiny_model_dir, "--seeking", "online", "--ratio", "0.05")
    assert summary["seeking"] == "online"
    assert not (tmp_path / "run" / "scores").exists()  # no offline store
    # 8 steps x 2 accumulation x batch 2 = 32 visits, each tallied once.
    assert summary["examples"] == 32 and summary["kept_targets"] > 0
    drift = summary["online_drift"]  # 64 records, 32 visits: no example is seen twice
    assert drift["examples_revisited"] == 0 and drift["mean_jaccard_first_last"] is None
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve


def test_kept_set_drift():
    from tokenseek.seeking.select import KeptSetDrift

    drift = KeptSetDrift()
    drift.add(0, [1, 1, 0, 0])
    drift.add(1, [0, 1, 1, 0])
    drift.add(0, [1, 0, 1, 0])  # {0,1} -> {0,2}: Jaccard 1/3
    drift.add(1, [0, 1, 1, 0])  # unchanged: 1
    drift.add(2, [1, 0, 0, 0])  # seen once: not counted
    assert drift.summary() == {"examples_revisited": 2, "mean_jaccard_first_last": pytest.approx((1 / 3 + 1) / 2)}


@pytest.mark.parametrize(
    "strategy,alpha,beta,skipped",
    [("tokenseek", 1, 0, "gradient"), ("context", 1, 1, "gradient"), ("context-residual", 1, 1, "gradient"), ("gradient", 1, 1, "context")],
)
def test_online_skips_the_score_the_selection_does_not_weigh(monkeypatch, strategy, alpha, beta, skipped):
    """α,β = 1,0 selects exactly as offline seeking does, without running the LM head for the
    gradient score (and β-only selection without the context score)."""
    import tokenseek.seeking.online as online

    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch(seed=8, lengths=(40, 25))
    offline = seek(model, input_ids, labels, attention_mask, ratio=0.2, strategy=strategy, alpha=alpha, beta=beta, select_from="targets")

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"the {skipped} score was computed though the selection gives it no weight")

    monkeypatch.setattr(online, "_gradient_score" if skipped == "gradient" else "capture_context_scores", must_not_run)
    keep, _, scores = OnlineSeeker(ratio=0.2, strategy=strategy, alpha=alpha, beta=beta, select_from="targets")(
        model, input_ids, labels, attention_mask
    )
    assert torch.equal(keep, offline.keep)
    assert float(getattr(scores, skipped).abs().sum()) == 0.0


# ----------------------------------------------------------------------------- a budget that covers every candidate
@pytest.mark.parametrize("strategy", ["random", "tokenseek", "context", "context-residual", "gradient", "mixed"])
def test_a_budget_covering_every_candidate_keeps_them_all_without_scores(strategy):
    labels = np.array([-100] * 30 + [7, 8, 9])  # positions 29, 30, 31 predict a target
    assert not ranking_needed(labels, 0.1, "targets")  # budget ceil(3.3) = 4 >= 3 targets
    assert ranking_needed(labels, 0.05, "targets") and ranking_needed(labels, 0.1, "all")
    keep = select_keep(33, 0.1, strategy, candidates=target_positions(labels))  # no scores given: none needed
    assert np.flatnonzero(keep).tolist() == [29, 30, 31]
    assert select_keep(33, 1.0, strategy).all()  # ratio 1 over all positions
    with pytest.raises(TokenSeekError, match="needs token scores") if strategy != "random" else contextlib.nullcontext():
        select_keep(33, 0.05, strategy, candidates=target_positions(labels))  # 2 of 3: a choice, so scores are needed


def test_training_scores_nothing_when_no_example_has_a_choice(tmp_path, tiny_model_dir, caplog):
    """Built-in examples are mostly prompt: at 20 % every budget covers all targets, so the
    scored selection keeps every target and the (slow) scoring pass is skipped."""
    with caplog.at_level("INFO", logger="tokenseek"):
        summary, _ = _train(tmp_path, tiny_model_dir, "--ratio", "0.2")
    assert not (tmp_path / "run" / "scores").exists()
    assert "nothing is scored" in caplog.text
    assert summary["kept_targets"] == summary["target_positions"] == summary["tokens_kept"]


def test_online_seeking_scores_nothing_when_no_example_has_a_choice(monkeypatch):
    import tokenseek.seeking.online as online

    def must_not_run(*args, **kwargs):
        raise AssertionError("scored although every budget covers all targets")

    monkeypatch.setattr(online, "online_scores", must_not_run)
    model = tiny_model("llama").eval()
    input_ids, attention_mask, _ = padded_batch(seed=8, lengths=(40, 25))
    labels = torch.full_like(input_ids, -100)
    labels[0, 37:40] = input_ids[0, 37:40]  # 3 targets, budget 4
    labels[1, 23:25] = input_ids[1, 23:25]  # 2 targets, budget 3 (the batch is padded: real tokens only count)
    keep, cache, scores = OnlineSeeker(ratio=0.1, select_from="targets")(model, input_ids, labels, attention_mask)
    assert cache is None and scores is None
    expected = torch.zeros_like(keep)
    expected[0, 36:39] = True
    expected[1, 22:24] = True
    assert torch.equal(keep, expected)
