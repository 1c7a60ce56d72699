"""Token seeking: scores equal brute-force references; selection and the score store behave."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import padded_batch, tiny_model
from tokenseek import seek
from tokenseek.cli.main import main
from tokenseek.errors import TokenSeekError
from tokenseek.seeking.seek import score_batch
from tokenseek.seeking.select import STRATEGIES, keep_count, select_keep


def brute_force_context(model, input_ids, attention_mask):
    """Eager attention with output_attentions: last layer, head-averaged column sums over real queries."""
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions[-1]
    finally:
        model.set_attn_implementation(impl)
    attn = attn * attention_mask[:, None, :, None]
    return attn.sum(dim=2).mean(dim=1) * attention_mask


def brute_force_gradient(model, input_ids, attention_mask, labels, layers_back=1):
    """Per example, d(mean loss)/d(hidden entering layer N-layers_back), full autograd, nothing frozen."""
    n_layers = model.config.num_hidden_layers
    out = torch.zeros(input_ids.shape, dtype=torch.float64)
    for b in range(input_ids.shape[0]):
        n = int(attention_mask[b].sum())
        result = model(input_ids=input_ids[b : b + 1, :n], output_hidden_states=True)
        hidden = result.hidden_states[n_layers - layers_back]
        hidden.retain_grad()
        logits = result.logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels[b, 1:n], ignore_index=-100)
        loss.backward()
        out[b, :n] = hidden.grad[0].abs().sum(-1)
        model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3_text", "gpt_neox"])
def test_context_score_matches_eager_attention(arch):
    model = tiny_model(arch).eval()
    input_ids, attention_mask, labels = padded_batch(seed=2, lengths=(26, 14, 7))
    context, _ = score_batch(model, input_ids, labels, attention_mask)
    expected = brute_force_context(model, input_ids, attention_mask)
    assert torch.allclose(context, expected, atol=1e-5), (context - expected).abs().max()
    assert torch.all(context[attention_mask == 0] == 0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("layers_back", [1, 2])
def test_gradient_score_matches_full_autograd(arch, layers_back):
    model = tiny_model(arch).eval()
    input_ids, attention_mask, labels = padded_batch(seed=3, lengths=(22, 16, 10))
    _, gradient = score_batch(model, input_ids, labels, attention_mask, layers_back=layers_back)
    expected = brute_force_gradient(model, input_ids, attention_mask, labels, layers_back)
    scale = expected.abs().max()
    assert scale > 0
    assert (gradient - expected).abs().max() / scale <= 1e-5


def test_context_only_scoring_gives_the_context_score_without_a_backward():
    """with_gradient=False (what a selection that never reads the gradient score needs): the
    same context score as the independent eager-attention reference, zero gradient score, and
    no autograd graph at all."""
    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch(seed=2, lengths=(26, 14, 7))
    graphs = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: graphs.append(1) or t, lambda t: t):
        context, gradient = score_batch(model, input_ids, labels, attention_mask, with_gradient=False)
    assert not graphs and not context.requires_grad
    assert torch.allclose(context, brute_force_context(model, input_ids, attention_mask), atol=1e-5)
    assert torch.all(gradient == 0)



def test_seek_without_the_gradient_keeps_what_the_context_score_chooses():
    """seek(with_gradient=False) under weights that ignore the gradient (α,β = 1,0) keeps the same
    tokens as full scoring, and refuses weights that read the gradient it would not compute."""
    model = tiny_model("llama")
    input_ids, attention_mask, labels = padded_batch(seed=4, lengths=(28, 19, 9))
    full = seek(model, input_ids, labels, attention_mask, ratio=0.3, alpha=1, beta=0, select_from="all")
    light = seek(model, input_ids, labels, attention_mask, ratio=0.3, alpha=1, beta=0, select_from="all", with_gradient=False)
    assert full.gradient.abs().sum() > 0 and torch.all(light.gradient == 0)
    assert torch.equal(light.keep, full.keep) and torch.allclose(light.context, full.context, atol=1e-6)
    # Selections without scores need none: random keeps the same tokens either way.
    random = [seek(model, input_ids, labels, attention_mask, ratio=0.3, strategy="random", with_gradient=g).keep for g in (True, False)]
    assert random[0].any() and torch.equal(*random)
    with pytest.raises(TokenSeekError, match="with_gradient=True"):
        seek(model, input_ids, labels, attention_mask, alpha=1, beta=1, with_gradient=False)

def test_context_residual_keeps_what_a_least_squares_reference_keeps():
    """``context-residual`` against an independent reference: the context score from eager
    attention maps (column sums over the real queries, head-averaged), log of it fitted on
    [1, log(n - i)] by torch's least squares, the top-k targets by residual."""
    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch(seed=6, lengths=(40, 31, 22), prompt=6)
    reference_context = brute_force_context(model, input_ids, attention_mask).double()
    result = seek(model, input_ids, labels, attention_mask, ratio=0.2, strategy="context-residual", with_gradient=False)
    plain = seek(model, input_ids, labels, attention_mask, ratio=0.2, strategy="context", with_gradient=False)
    for b in range(input_ids.shape[0]):
        n = int(attention_mask[b].sum())
        y = reference_context[b, :n].log()
        x = torch.stack([torch.ones(n, dtype=torch.float64), torch.arange(n, 0, -1, dtype=torch.float64).log()], dim=1)
        residual = y - x @ torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        targets = (labels[b, 1:n] != -100).nonzero(as_tuple=True)[0]
        k = min(keep_count(n, 0.2), len(targets))
        expected = targets[residual[targets].argsort(descending=True, stable=True)[:k]]
        assert sorted(result.keep[b].nonzero(as_tuple=True)[0].tolist()) == sorted(expected.tolist())
    assert not torch.equal(result.keep, plain.keep)


@pytest.mark.parametrize("power", [-2.0, 0.5, 3.0])
def test_context_residual_ignores_any_power_law_trend_over_position(power):
    """Multiplying the context score by (n - i)^power (a pure position trend, as the causal mask
    gives the summed score) changes what ``context`` keeps but not what ``context-residual`` keeps."""
    rng = np.random.default_rng(1)
    n = 60
    context = rng.lognormal(size=n)
    tilted = context * np.arange(n, 0, -1, dtype=np.float64) ** power
    straight = select_keep(n, 0.2, "context-residual", context=context, gradient=np.zeros(n))
    bent = select_keep(n, 0.2, "context-residual", context=tilted, gradient=np.zeros(n))
    assert np.array_equal(straight, bent)
    assert not np.array_equal(select_keep(n, 0.2, "context", context=context, gradient=np.zeros(n)),
                              select_keep(n, 0.2, "context", context=tilted, gradient=np.zeros(n)))


def test_scoring_leaves_parameters_untouched():
    model = tiny_model("llama")
    model.train()
    input_ids, attention_mask, labels = padded_batch()
    seek(model, input_ids, labels, attention_mask)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_smollm2_scores(smollm2):
    # float64 copy: float32 rounding over 30 layers alone is ~2e-5 relative (see test_ditching).
    import copy

    model, tokenizer = smollm2
    model = copy.deepcopy(model).double().eval()
    texts = ["Below is an instruction. Name three colours.\n### Response:\nRed, green and blue.", "Say hi.\n### Response:\nHi!"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    context, gradient = score_batch(model, batch["input_ids"], labels, batch["attention_mask"])
    expected = brute_force_context(model, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(context, expected, atol=1e-5)
    expected_grad = brute_force_gradient(model, batch["input_ids"], batch["attention_mask"], labels)
    assert (gradient - expected_grad).abs().max() / expected_grad.abs().max() <= 1e-5


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in ("full", "probe")])
@pytest.mark.parametrize("length, ratio", [(1, 0.1), (10, 0.1), (37, 0.25), (200, 0.05), (64, 1.0)])
def test_selection_keeps_exactly_ceil_ratio(strategy, length, ratio):
    rng = np.random.default_rng(length)
    context, gradient = rng.random(length) + 1e-3, rng.random(length)
    keep = select_keep(length, ratio, strategy, context=context, gradient=gradient, seed=1, index=4)
    assert keep.dtype == bool and keep.shape == (length,)
    assert keep.sum() == keep_count(length, ratio) == max(1, int(np.ceil(ratio * length - 1e-9)))
    again = select_keep(length, ratio, strategy, context=context, gradient=gradient, seed=1, index=4)
    assert np.array_equal(keep, again)


def test_selection_semantics():
    context = np.array([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    gradient = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0])
    pick = lambda s, **kw: set(np.flatnonzero(select_keep(10, 0.2, s, context=context, gradient=gradient, **kw)))  # noqa: E731
    assert pick("context") == {0, 9}
    assert pick("gradient") == {8, 0}  # ties in gradient go to the earliest position
    assert pick("tokenseek", alpha=1, beta=1) == {0, 8}  # log 5 + 0 and log 1 + 1 beat log 2
    assert select_keep(10, 0.2, "full").all()
    # first: the earliest positions, needing no scores; among candidates, the earliest candidates.
    assert set(np.flatnonzero(select_keep(10, 0.2, "first"))) == {0, 1}
    answer = np.array([False] * 4 + [True] * 6)
    assert set(np.flatnonzero(select_keep(10, 0.2, "first", candidates=answer))) == {4, 5}
    fill = select_keep(10, 0.9, "first", candidates=answer, fill=True)  # 9 = the 6 targets, then positions 0..2
    assert set(np.flatnonzero(fill)) == set(range(10)) - {3}
    probe = select_keep(10, 0.1, "probe", context=context, gradient=gradient)
    assert probe.sum() == 2  # top 10 % + the 40–50 % band
    assert select_keep(10, 0.2, "random", seed=0, index=0).sum() == 2
    assert not np.array_equal(select_keep(50, 0.2, "random", seed=0, index=0), select_keep(50, 0.2, "random", seed=1, index=0))


def test_default_score_weights_depend_on_where_the_kept_tokens_come_from():
    """Unset alpha/beta: the context score alone among the targets (what the alpha_beta_targets
    study found best there), the paper's (1, 1) over every position; a weight given is kept."""
    from tokenseek.seeking.online import OnlineSeeker
    from tokenseek.seeking.select import candidate_positions, score_weights

    assert score_weights("targets") == score_weights("targets-first") == (1.0, 0.0)
    assert score_weights("all") == (1.0, 1.0)
    assert score_weights("targets", beta=0.5) == (1.0, 0.5) and score_weights("all", alpha=0.0) == (0.0, 1.0)
    assert (OnlineSeeker().alpha, OnlineSeeker().beta) == (1.0, 0.0) and OnlineSeeker(select_from="all").beta == 1.0
    rng = np.random.default_rng(5)
    context, gradient = rng.random(40) + 1e-3, rng.random(40)
    labels = np.array([-100] * 10 + list(range(30)))  # positions 9..38 predict a target
    top4 = lambda score, pool: sorted(sorted(pool, key=lambda i: -score[i])[:4])  # noqa: E731
    eq5 = np.log(context) + (gradient - gradient.min()) / (gradient.max() - gradient.min())  # (1, 1), written out
    among_targets = top4(context, range(9, 39))
    assert among_targets != top4(eq5, range(9, 39))  # the data tells the two weightings apart
    keep = select_keep(40, 0.1, "tokenseek", context=context, gradient=gradient, **candidate_positions(labels, "targets"))
    assert np.flatnonzero(keep).tolist() == among_targets
    keep = select_keep(40, 0.1, "tokenseek", context=context, gradient=gradient, **candidate_positions(labels, "all"))
    assert np.flatnonzero(keep).tolist() == top4(eq5, range(40))


def test_mixed_and_probe_pick_what_they_promise():
    from tokenseek.seeking.select import combined_score

    rng = np.random.default_rng(3)
    context, gradient = rng.random(40) + 1e-3, rng.random(40)
    ranked = list(np.argsort(-combined_score(context, gradient, 1.0, 1.0), kind="stable"))  # best first, independently
    # mixed at 20 %: k = 8, the best 4 by Eq. 5, then 4 random others.
    mixed = set(np.flatnonzero(select_keep(40, 0.2, "mixed", context=context, gradient=gradient, seed=0, index=1)))
    assert len(mixed) == 8 and set(ranked[:4]) <= mixed and mixed != set(ranked[:8])  # the other 4 are drawn, not the next best
    # ... among candidates only: every kept position is a candidate, the best 4 candidates among them.
    candidates = np.zeros(40, dtype=bool)
    candidates[::3] = True
    kept = set(np.flatnonzero(select_keep(40, 0.2, "mixed", context=context, gradient=gradient, alpha=1, beta=1, candidates=candidates, seed=0, index=1)))
    best_candidates = [i for i in ranked if candidates[i]]
    assert len(kept) == 8 and kept <= set(np.flatnonzero(candidates)) and set(best_candidates[:4]) <= kept
    # probe: the top 10 % (4 of 40) plus ranks 16..19 (the 40-50 % band), whatever the ratio.
    probe = set(np.flatnonzero(select_keep(40, 0.5, "probe", context=context, gradient=gradient)))
    assert probe == set(ranked[:4]) | set(ranked[16:20])
    # ... among 14 candidates: the top 4 candidates plus candidate ranks 5..6 (floor(0.4·14), floor(0.5·14)).
    probe = set(np.flatnonzero(select_keep(40, 0.1, "probe", context=context, gradient=gradient, alpha=1, beta=1, candidates=candidates)))
    assert probe == set(best_candidates[:4]) | set(best_candidates[5:7])


def test_seek_never_keeps_padding():
    model = tiny_model("llama")
    input_ids, attention_mask, labels = padded_batch(lengths=(30, 5))
    result = seek(model, input_ids, labels, attention_mask, ratio=0.5, select_from="all")
    assert not result.keep[attention_mask == 0].any()
    assert result.keep.sum(1).tolist() == [15, 3]
    assert torch.isinf(result.combined[attention_mask == 0]).all()
    # Among target positions only: the short example has one (its prompt is 4 of 5 tokens).
    targets = seek(model, input_ids, labels, attention_mask, ratio=0.5, select_from="targets")
    assert targets.keep.sum(1).tolist() == [15, 1]


# ----------------------------------------------------------------------------- targets first, then the rest
def test_targets_first_keeps_every_target_then_fills_the_budget():
    from tokenseek.seeking.select import candidate_positions, combined_score, keep_count, ranking_needed, target_positions

    labels = np.array([-100] * 36 + [5, 6, 7, 8])  # 40 tokens; positions 35..38 predict the 4 targets
    targets = target_positions(labels)
    rng = np.random.default_rng(3)
    context, gradient = rng.random(40) + 0.01, rng.random(40)
    pool = candidate_positions(labels, "targets-first")
    # Budget 12 > 4 targets: every target, and 8 more positions.
    for strategy in ("random", "tokenseek", "context", "gradient"):
        keep = select_keep(40, 0.3, strategy, context=context, gradient=gradient, seed=1, index=2, **pool)
        assert keep.sum() == keep_count(40, 0.3) == 12 and keep[targets].all(), strategy
    # The 8 others are the highest-scoring non-targets, by an independent sort.
    keep = select_keep(40, 0.3, "tokenseek", context=context, gradient=gradient, alpha=1, beta=1, **pool)
    score = combined_score(context, gradient, 1.0, 1.0)
    others = sorted((i for i in range(40) if not targets[i]), key=lambda i: -score[i])[:8]
    assert sorted(np.flatnonzero(keep & ~targets).tolist()) == sorted(others)
    # Random fills are seeded by (seed, example index) and drawn from the non-targets.
    assert np.array_equal(select_keep(40, 0.3, "random", seed=1, index=2, **pool), select_keep(40, 0.3, "random", seed=1, index=2, **pool))
    assert not np.array_equal(select_keep(40, 0.3, "random", seed=1, index=2, **pool), select_keep(40, 0.3, "random", seed=2, index=2, **pool))
    # A budget below the number of targets ranks the targets exactly as "targets" does.
    short = np.array([-100] * 4 + list(range(1, 37)))
    for strategy in ("random", "tokenseek"):
        args = dict(context=context, gradient=gradient, seed=4, index=1)
        assert np.array_equal(
            select_keep(40, 0.3, strategy, **args, **candidate_positions(short, "targets-first")),
            select_keep(40, 0.3, strategy, **args, **candidate_positions(short, "targets")),
        )
    # A choice among the rest needs scores; none is left when budget = targets or = every token.
    with pytest.raises(TokenSeekError, match="needs token scores"):
        select_keep(40, 0.3, "tokenseek", **pool)
    assert ranking_needed(labels, 0.3, "targets-first") and not ranking_needed(labels, 0.3, "targets")
    assert not ranking_needed(labels, 0.1, "targets-first")  # ceil(4.0) = 4 = the targets
    assert not ranking_needed(labels, 1.0, "targets-first") and select_keep(40, 1.0, "tokenseek", **pool).all()
    assert np.array_equal(select_keep(40, 0.1, "tokenseek", **pool), targets)


@pytest.mark.parametrize("bad", [dict(ratio=0), dict(ratio=1.01), dict(ratio=float("nan")), dict(alpha=0, beta=0)])
def test_selection_rejects_bad_settings(bad):
    with pytest.raises(TokenSeekError):
        select_keep(10, bad.get("ratio", 0.1), "tokenseek", context=np.ones(10), gradient=np.ones(10), alpha=bad.get("alpha", 1), beta=bad.get("beta", 1))


def test_nan_scores_are_refused():
    with pytest.raises(TokenSeekError, match="NaN"):
        select_keep(3, 0.5, "tokenseek", context=np.array([1.0, np.nan, 1.0]), gradient=np.ones(3))


def _score_argv(model_dir, data, out, *extra):
    return ["score", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--max-length", "64", "--batch-size", "2", *extra]


def test_store_resume_equals_uninterrupted(tmp_path, tiny_model_dir, data_file, monkeypatch):
    import tokenseek.seeking.store as store

    assert main(_score_argv(tiny_model_dir, data_file, tmp_path / "whole")) == 0
    written = []
    real_write = store._write_parquet

    def dying_write(path, rows):
        if len(written) == 3:
            raise KeyboardInterrupt  # stands in for a kill between two batches
        written.append(path)
        real_write(path, rows)

    monkeypatch.setattr(store, "_write_parquet", dying_write)
    assert main(_score_argv(tiny_model_dir, data_file, tmp_path / "part")) == 130
    assert len(list((tmp_path / "part" / "shards").glob("*.parquet"))) == 3
    monkeypatch.setattr(store, "_write_parquet", real_write)
    rescored = []
    monkeypatch.setattr(store, "_write_parquet", lambda p, r: (rescored.append(p), real_write(p, r)))
    assert main(_score_argv(tiny_model_dir, data_file, tmp_path / "part")) == 0
    assert len(rescored) == 12 - 3 + 1  # the 9 missing batches, then the merged file
    import pyarrow.parquet as pq

    whole = pq.read_table(tmp_path / "whole" / "scores.parquet").to_pydict()
    part = pq.read_table(tmp_path / "part" / "scores.parquet").to_pydict()
    assert whole == part and len(whole["index"]) == 24


def test_train_scores_no_gradient_when_its_weights_leave_it_out(tmp_path, tiny_model_dir, data_file, capsys):
    """The default (α,β = 1,0 among the targets) never reads the gradient score, so `train`'s own
    store holds context scores only; it keeps what a full store keeps, and a run that reads the
    gradient score (or visualize) refuses it in one line."""
    from tokenseek.seeking.store import ScoreStore

    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--max-length", "64", "--max-steps", "1", "--grad-accum", "1",
            "--ratio", "0.02"]  # fewer kept positions than targets: the targets are ranked
    own = tmp_path / "own"
    assert main([*argv, "--output-dir", str(own)]) == 0
    store = ScoreStore.open(own / "scores")
    assert not store.has_gradient and all(not row["gradient"].any() for row in store.rows.values())
    full = tmp_path / "full-scores"
    assert main(_score_argv(tiny_model_dir, data_file, full)) == 0
    reference = ScoreStore.open(full)
    assert reference.has_gradient and set(reference.rows) == set(store.rows)
    for index, row in reference.rows.items():
        assert np.allclose(store.get(index)["context"], row["context"], atol=1e-5)
    assert main([*argv, "--output-dir", str(tmp_path / "with-full"), "--scores", str(full)]) == 0
    summaries = [json.loads((run / "train_summary.json").read_text()) for run in (own, tmp_path / "with-full")]
    assert summaries[0]["tokens_kept"] == summaries[1]["tokens_kept"] and summaries[0]["kept_targets"] == summaries[1]["kept_targets"]
    capsys.readouterr()
    code = main([*argv, "--output-dir", str(tmp_path / "beta"), "--scores", str(own / "scores"), "--beta", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "holds context scores only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "beta" / "model").exists()
    code = main(["visualize", "--summary", "--model", str(tiny_model_dir), "--data", str(data_file), "--max-length", "64",
                 "--scores", str(own / "scores"), "--output", str(tmp_path / "viz")])
    err = capsys.readouterr().err
    assert code == 2 and "holds context scores only" in err


def test_store_refuses_other_data(tmp_path, tiny_model_dir, data_file, capsys):
    out = tmp_path / "scores"
    assert main(_score_argv(tiny_model_dir, data_file, out)) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--template", "chat", "--scores", str(out),
                 "--output-dir", str(run), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "made for other data" in err
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--max-length", "64", "--scores", str(out),
                 "--output-dir", str(run), "--max-steps", "1", "--grad-accum", "1"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["data"]["examples"] == 24


def test_store_identifies_the_model_by_weights_not_path(tmp_path, tiny_model_dir, data_file):
    import shutil

    from safetensors.torch import load_file, save_file

    from tokenseek.data import load_records, tokenize_records
    from tokenseek.models import load_model
    from tokenseek.seeking.store import ScoreStore

    out = tmp_path / "scores"
    assert main([*_score_argv(tiny_model_dir, data_file, out), "--limit", "4"]) == 0
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, copy)
    model, tokenizer = load_model(str(copy))
    data = tokenize_records(load_records(str(data_file), limit=4), tokenizer, max_length=64)
    assert len(ScoreStore.open(out, data=data, model=model, model_id=str(copy))) == 4  # same weights, another path

    # One value changed deep in the model (not in the embeddings the old probe read): another model.
    weights = load_file(str(copy / "model.safetensors"))
    name = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1.0
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    changed, _ = load_model(str(copy))
    with pytest.raises(TokenSeekError, match="made with another model"):
        ScoreStore.open(out, data=data, model=changed, model_id=str(copy))


def test_store_version_is_checked(tmp_path, tiny_model_dir, data_file, capsys):
    out = tmp_path / "scores"
    assert main([*_score_argv(tiny_model_dir, data_file, out), "--limit", "4"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    capsys.readouterr()
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--limit", "4", "--max-length", "64",
                 "--scores", str(out), "--output-dir", str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "format version 99" in err and len(err.splitlines()) == 1


def test_score_survives_kill_9(tmp_path, tiny_model_dir):
    """A real SIGKILL in the middle of `tokenseek score`, then the same command finishes the store."""
    out = tmp_path / "scores"
    data = tmp_path / "data.json"
    count = 150
    data.write_text(json.dumps([{"instruction": f"Write a sentence about the number {i}.", "input": "", "output": f"{i} is a number. " * 5} for i in range(count)]))
    cmd = [sys.executable, "-m", "tokenseek", "score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
           "--batch-size", "1", "--max-length", "96"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def shards() -> int:
        return len(list((out / "shards").glob("*.parquet"))) if (out / "shards").exists() else 0

    deadline = time.time() + 900  # generous: a loaded machine starts the process slowly; the loop ends at 3 shards
    while time.time() < deadline and proc.poll() is None and shards() < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "shards").glob("*.parquet")))
    assert 0 < done_before < count, "the kill did not land mid-run"
    assert not (out / "scores.parquet").exists()
    # What a kill during a shard write leaves (atomic_file's temporary, never cleaned up): the
    # kill above lands there only sometimes, so make sure the resume meets one.
    (out / "shards" / ".b999999.partial.parquet").write_bytes(b"half a shard")
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert not (out / "shards").exists()
    import pyarrow.parquet as pq

    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert sorted(table["index"]) == list(range(count))


def test_weight_sample_indices_stay_inside_large_tensors():
    """SmolLM2's embedding has 49,152 x 576 = 28,311,552 values: float spacing overshot its end."""
    from tokenseek.seeking.store import spaced_indices

    for length in (1, 2, 63, 64, 65, 28_311_552, 2**31 + 7):
        idx = spaced_indices(length, 64)
        assert len(idx) == min(64, length)
        assert int(idx[0]) == 0 and int(idx[-1]) == length - 1
        assert bool((idx[1:] > idx[:-1]).all())


def test_selection_tally_counts_targets_and_where_in_the_answer_they_sit():
    from tokenseek.seeking.select import SelectionTally

    tally = SelectionTally()
    labels = [-100, -100, 5, 6, 7, 8]  # positions 1..4 predict the 4 targets
    tally.add([False, True, False, False, True, False], labels)  # first and last target: 0 and 1
    tally.add([True, True, True, False, False, False], labels)  # a prompt token, targets 0 and 1/3
    tally.add([True, False], [-100, 9])  # position 0 predicts the lone target: the middle
    s = tally.summary()
    assert (s["examples"], s["tokens_kept"], s["kept_targets"], s["target_positions"]) == (3, 6, 5, 9)
    assert s["kept_target_answer_position"] == pytest.approx((0 + 1 + 0 + 1 / 3 + 0.5) / 5)
    assert s["examples_without_kept_target"] == 0
    empty = SelectionTally()
    empty.add([True, False], [-100, -100])
    assert empty.summary()["kept_target_answer_position"] is None and empty.summary()["examples_without_kept_target"] == 1
