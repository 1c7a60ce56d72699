"""``tokenseek-prefix``: shared contexts run once, same log-likelihoods and is_greedy as lm-eval's HFLM."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _shared_data import shared_data_dir  # tests/ is on sys.path (pytest's rootdir insertion)
from conftest import VOCAB, tiny_model

ATOL = 1e-4  # the bound on |log-likelihood difference|


@pytest.fixture(scope="module")
def tokenizer():
    from tokenseek.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tiny_full_vocab(tokenizer):
    """A tiny Llama over the real tokenizer's vocabulary, for text-level requests."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights: sharper distributions, so float errors would show
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def _pair(model, tokenizer, **kwargs):
    from lm_eval.models.huggingface import HFLM

    from tokenseek.eval.prefix_lm import PrefixCachedLM

    args = dict(pretrained=model, tokenizer=tokenizer, device="cpu", **kwargs)
    return HFLM(**args), PrefixCachedLM(**args)


def _assert_same(expected, got):
    assert len(got) == len(expected)
    diffs = [abs(e[0] - g[0]) for e, g in zip(expected, got)]
    assert max(diffs) <= ATOL, f"max |diff| {max(diffs):.2e}"
    assert [g[1] for g in got] == [e[1] for e in expected]  # is_greedy, in request order


def _greedy(model, tokens, n):
    """The model's own greedy continuation of ``tokens``: is_greedy must come out True."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([tokens + out])).logits[0, -1].argmax()))
    return out


def _synthetic_requests(model, max_length, seed=0):
    """Groups of 1-5 continuations per context, contexts short to far over max_length,
    one-token and longer continuations, greedy ones included; shuffled."""
    rng = random.Random(seed)
    requests = []
    for length in (1, 3, 20, 40, 47, 70, 200):
        context = [rng.randrange(VOCAB) for _ in range(length)]
        conts = [[rng.randrange(VOCAB) for _ in range(rng.choice((1, 2, 6, 11)))] for _ in range(rng.choice((1, 4, 5)))]
        conts.append(_greedy(model, context[-(max_length - 3):], 3))  # context kept as HFLM would (3-token cont)
        requests += [(("ctx", str(c)), context, c) for c in conts]
    requests.append((("ctx", "full"), list(range(5)), list(range(5, 5 + max_length))))  # continuation fills max_length
    rng.shuffle(requests)
    return requests


class _TokenCounter:
    """Counts input positions the model runs (its forward's input_ids)."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += ids.numel()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_neox"])  # GQA, sliding-window layers, parallel attention
def test_synthetic_requests_match_hflm(arch, tokenizer):
    model = tiny_model(arch).eval()
    max_length = 48
    hf, prefix = _pair(model, tokenizer, batch_size=3, max_length=max_length)
    requests = _synthetic_requests(model, max_length)
    assert sum(len(ctx) + len(cont) > max_length + 1 for _, ctx, cont in requests) >= 5  # truncation exercised

    expected = hf._loglikelihood_tokens(requests, disable_tqdm=True)
    got = prefix._loglikelihood_tokens(requests, disable_tqdm=True)
    _assert_same(expected, got)
    assert any(g for _, g in got), "no greedy continuation came out greedy"
    assert any(not g for _, g in got)


def test_each_shared_context_runs_once(tokenizer):
    """3 contexts x 4 two-token continuations: HFLM runs 12 x 31 positions; the cache
    runs each context's first 29 tokens once, then 4 x (last context token + 1)."""
    model = tiny_model("llama").eval()
    hf, prefix = _pair(model, tokenizer, batch_size=8)
    requests = [(("c", f"{g}{c}"), [g] * 30, [50 + c, 60 + c]) for g in range(3) for c in range(4)]
    counter = _TokenCounter(model)
    expected = hf._loglikelihood_tokens(requests, disable_tqdm=True)
    hf_tokens, counter.tokens = counter.tokens, 0
    got = prefix._loglikelihood_tokens(requests, disable_tqdm=True)
    counter.handle.remove()
    _assert_same(expected, got)
    assert hf_tokens == 12 * 31
    assert counter.tokens == 3 * (29 + 4 * 2)


def test_truncated_context_keeps_hflms_tokens(tokenizer):
    """One context over max_length with continuations of different lengths: HFLM cuts a
    different number of context tokens for each, so they must not share one cache."""
    model = tiny_model("llama").eval()
    hf, prefix = _pair(model, tokenizer, batch_size=8, max_length=16)
    context = list(range(30))
    requests = [(("c", str(n)), context, [40 + i for i in range(n)]) for n in (1, 1, 4, 4, 9, 16)]
    groups = {prefix._visible_context(ctx, cont) for _, ctx, cont in requests}
    assert [len(g) for g in sorted(groups, key=len)] == [1, 8, 13, 16]  # 17 - len(cont) context tokens each
    assert all(g == tuple(context[-len(g):]) for g in groups)  # the rightmost ones, as HFLM keeps
    _assert_same(hf._loglikelihood_tokens(requests, disable_tqdm=True), prefix._loglikelihood_tokens(requests, disable_tqdm=True))


def test_text_requests_empty_context_and_rolling_match_hflm(tiny_full_vocab, tokenizer):
    """Through loglikelihood(): HFLM's own _encode_pair split (trailing spaces move to the
    continuation) and empty contexts (the prefix token as context)."""
    from lm_eval.api.instance import Instance

    hf, prefix = _pair(tiny_full_vocab, tokenizer, batch_size=2, max_length=64)
    pairs = [("Question: what is red?\nAnswer:", c) for c in (" blood", " the sky at noon", " grass", " a")]
    pairs += [("The cat sat on the ", c) for c in ("mat.", "hat, then left.")]  # trailing space
    pairs += [("", c) for c in ("Hello world", "Hello there", "Goodbye")]  # empty context: shared prefix token
    pairs += [("A lone context", " with its one continuation")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    _assert_same(hf.loglikelihood(requests, disable_tqdm=True), prefix.loglikelihood(requests, disable_tqdm=True))

    text = " ".join(f"word{i}" for i in range(120))  # several 64-token windows
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate((text, "short text", text[:200]))]
    expected, got = hf.loglikelihood_rolling(rolling, disable_tqdm=True), prefix.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert got == pytest.approx(expected, abs=ATOL)


# The multiple-choice tasks the project ships: (name, items, shots); small few-shot for speed.
TASK_CASES = [
    ("arc_challenge", 3, 3),
    ("hellaswag", 3, 2),
    ("ethics", 5, 2),  # one item per subtask
    ("truthfulqa_mc1", 2, 0),
    ("truthfulqa_mc2", 2, 0),
    ("winogrande", 3, 0),
    ("mmlu_anatomy", 3, 5),
    ("mmlu_college_physics", 2, 5),
]


@pytest.mark.shared_data
@pytest.mark.parametrize("name,limit,shots", TASK_CASES, ids=[c[0] for c in TASK_CASES])
def test_task_requests_match_hflm(tiny_full_vocab, tokenizer, name, limit, shots):
    from tokenseek.eval.harness import select_tasks

    selection = select_tasks(name, data_dir=shared_data_dir("eval"), limit=limit, num_fewshot={name: shots})
    requests = []
    for plan in selection.plans:
        for leaf, task in plan["leaves"].items():
            task.build_all_requests(samples=list(range(plan["items"][leaf])), rank=0, world_size=1)
            requests += [inst for inst in task.instances if inst.request_type == "loglikelihood"]
    assert requests
    hf, prefix = _pair(tiny_full_vocab, tokenizer, batch_size=4)
    _assert_same(hf.loglikelihood(requests, disable_tqdm=True), prefix.loglikelihood(requests, disable_tqdm=True))


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from tokenseek.eval.prefix_lm import MODEL_NAME, PrefixCachedLM

    assert MODEL_NAME == "tokenseek-prefix" and get_model(MODEL_NAME) is PrefixCachedLM
    assert get_model("hf") is not PrefixCachedLM  # lm-eval's own models are still there


@pytest.mark.shared_data
def test_evaluate_tasks_same_scores_either_model_and_cli_flag(tiny_full_vocab, tokenizer, tiny_model_dir, tmp_path, capsys):
    from tokenseek.cli.main import main
    from tokenseek.eval.harness import evaluate_tasks

    data = shared_data_dir("eval")
    runs = {m: evaluate_tasks(tiny_full_vocab, tokenizer, "arc_challenge", data_dir=data, limit=3, num_fewshot={"arc_challenge": 2}, batch_size=2, lm_eval_model=m) for m in ("hf", "tokenseek-prefix")}
    assert runs["hf"]["tasks"]["arc_challenge"]["value"] == runs["tokenseek-prefix"]["tasks"]["arc_challenge"]["value"]
    assert runs["hf"]["lm_eval_model"] == "hf" and runs["tokenseek-prefix"]["lm_eval_model"] == "tokenseek-prefix"

    out = tmp_path / "res.json"
    base = ["eval", "--model", str(tiny_model_dir), "--tasks", "winogrande", "--limit", "1", "--data-dir", str(data), "--output", str(out)]
    assert main(base) == 0 and json.loads(out.read_text())["lm_eval_model"] == "tokenseek-prefix"  # the default
    assert main(base + ["--lm-eval-model", "hf"]) == 0 and json.loads(out.read_text())["lm_eval_model"] == "hf"
    capsys.readouterr()


@pytest.mark.shared_data
def test_lm_eval_command_line_runs_tokenseek_prefix(tiny_model_dir, tmp_path):
    """``python -m tokenseek.eval.lm_eval_cli`` is lm-eval's CLI with the model registered."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    metadata = json.dumps({"tokenseek_data_dir": str(shared_data_dir("eval"))})
    cmd = [
        sys.executable, "-m", "tokenseek.eval.lm_eval_cli", "--model", "tokenseek-prefix",
        "--model_args", f"pretrained={tiny_model_dir}", "--device", "cpu", "--include_path", str(root / "tokenseek" / "eval" / "tasks"),
        "--tasks", "tokenseek_arc_easy", "--num_fewshot", "1", "--limit", "2", "--metadata", metadata, "--output_path", str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert result["config"]["model"] == "tokenseek-prefix"
    assert "acc_norm,none" in result["results"]["tokenseek_arc_easy"]
