"""`tokenseek bench` / `tokenseek plan` on a tiny random Llama (seq 64): fields, relations, errors — never timings."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tokenseek.bench import memory
from tokenseek.bench.planner import make_plan, parse_budget
from tokenseek.cli.main import main
from tokenseek.errors import TokenSeekError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved 2-layer random Llama with a word-level tokenizer: an ordinary HF directory, no special-casing."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    vocab = {"<unk>": 0, "</s>": 1, **{f"t{i}": i + 2 for i in range(510)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bench_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --jobs 3: workers run side by side; fine, because nothing here asserts a timing.
    code = main([
        "bench", "--model", tiny_model, "--peft", "lora", "--seq-len", "64", "--ratios", "1.0,0.1",
        "--steps", "1", "--warmup", "1", "--jobs", "3", "--output", str(out),
    ])
    assert code == 0
    return out


def test_bench_writes_json_table_and_charts(bench_dir):
    doc = json.loads((bench_dir / "bench.json").read_text())
    assert "synthetic" in doc["input"]
    (g,) = doc["groups"]
    assert (g["peft"], g["seq_len"]) == ("lora", 64)
    rows = {r["spec"]["ratio"]: r for r in g["rows"]}
    assert set(rows) == {1.0, 0.1}
    for r in rows.values():
        assert "error" not in r, r.get("error")
        for key in ("peak_bytes", "average_bytes", "baseline_bytes"):
            assert r["memory"][key] > 0
        assert r["memory"]["average_bytes"] <= r["memory"]["peak_bytes"]
        # A step frees everything it allocates: the replayed level returns to where it started.
        assert r["memory"]["end_bytes"] == r["memory"]["baseline_bytes"]
        assert 0 < r["memory"]["optimizer_peak_bytes"] <= r["memory"]["peak_bytes"]
        windows = max(r["memory"]["forward_backward_peak_bytes"], r["memory"]["optimizer_peak_bytes"])
        if r["environment"]["device"] == "cuda":  # the allocator's counter, which rounds each block up to 512 bytes
            assert windows <= r["memory"]["peak_bytes"] <= 1.01 * windows
        else:
            assert r["memory"]["peak_bytes"] == windows
        assert r["activations"]["saved_bytes"] > 0
        assert {"median", "min", "max"} <= set(r["time"]["step_s"])
        assert r["rss"]["peak_bytes"] > 0
        assert r["params"]["trainable_params"] > 0 and r["params"]["optimizer_bytes"] > 0
        assert set(r["relative"]) >= {"peak_bytes", "average_bytes", "activation_bytes", "step_s", "peak_rss_bytes"}
    assert rows[1.0]["relative"]["peak_bytes"] == 1.0
    assert rows[0.1]["tokens"]["kept"] == 7  # ceil(0.1 * 64)
    assert rows[0.1]["activations"]["saved_bytes"] < rows[1.0]["activations"]["saved_bytes"]
    assert rows[0.1]["relative"]["activation_bytes"] < 1.0
    score = g["score"]
    assert score is not None and "memory" in score, score.get("error")
    # The default scoring stage is train's default: the context score alone, no graph kept.
    assert score["spec"]["score_gradient"] is False and score["activations"]["saved_bytes"] == 0

    table = (bench_dir / "bench.md").read_text()
    assert "| scoring (context only, 10%) |" in table
    assert "| Ratio | Ave. Mem. | Max. Mem." in table and "| 10% |" in table and "100% (full token)" in table
    for png in ("bench.png", "breakdown.png"):
        assert (bench_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_synthetic_batch_with_a_masked_prompt_keeps_every_position_at_ratio_one():
    """--target-share < 1: ditched rows keep only positions that predict a label, but the
    full-token reference trains through the prompt too (it once kept only the targets, which is
    a ditched step with the prompt as context, not full-token training)."""
    from tokenseek.bench.worker import synthetic_batch

    full = synthetic_batch(512, 64, 2, 1.0, 0, "cpu", target_share=0.5)
    assert (full["labels"][:, :32] == -100).all() and (full["labels"][:, 32:] != -100).all()
    assert torch.equal(full["keep"], full["attention_mask"].bool())
    part = synthetic_batch(512, 64, 2, 0.1, 0, "cpu", target_share=0.5)
    assert part["keep"].sum(1).tolist() == [7, 7] and not part["keep"][:, :31].any()


def test_scoring_stage_with_the_gradient_keeps_the_partial_backward_graph(tiny_model):
    from tokenseek.bench.worker import run

    spec = {"model": tiny_model, "mode": "score", "seq_len": 32, "steps": 0, "warmup": 1}
    with_gradient = run({**spec, "score_gradient": True})
    context_only = run(spec)
    assert with_gradient["activations"]["saved_bytes"] > 0 == context_only["activations"]["saved_bytes"]
    assert with_gradient["memory"]["peak_bytes"] > context_only["memory"]["peak_bytes"]


def test_plan_from_bench_picks_a_ratio(bench_dir, capsys):
    doc = json.loads((bench_dir / "bench.json").read_text())
    rows = {r["spec"]["ratio"]: r["memory"]["peak_bytes"] for r in doc["groups"][0]["rows"]}
    between = (rows[1.0] + rows[0.1]) / 2 / 2**20
    assert main(["plan", "--from-bench", str(bench_dir), "--budget", f"{between:.3f}MiB"]) == 0
    out = capsys.readouterr().out
    assert "largest ratio that fits" in out
    best = float(out.split("largest ratio that fits")[1].split(":")[1].split()[0])
    assert 0.1 <= best < 1.0


def test_ratio_for_budget_end_to_end(tiny_model):
    from tokenseek.bench.planner import ratio_for_budget
    from tokenseek.train.config import TrainConfig

    cfg = TrainConfig(model=tiny_model, peft="lora", batch_size=1, memory_budget="2GiB")
    assert ratio_for_budget(cfg, 64) == 1.0


def test_memory_budget_measures_the_step_the_run_will_train(monkeypatch):
    """The plan behind --memory-budget measures the run's own precision, checkpointing and
    chunking (a bf16 run with checkpointing needs far less than the fp32 default step)."""
    from tokenseek.bench import planner, run
    from tokenseek.train.config import TrainConfig

    specs = []

    def fake_worker(spec, timeout=None):
        specs.append(spec)
        return {"memory": {"peak_bytes": int((100 + 1000 * spec["ratio"]) * 2**20)}}

    monkeypatch.setattr(run, "resolve", lambda model: "model-dir")
    monkeypatch.setattr(run, "run_worker", fake_worker)
    cfg = TrainConfig(peft="lora", memory_budget="650MiB", dtype="bf16", gradient_checkpointing=True, loss_chunk=16, context_chunk=64)
    assert 0.54 <= planner.ratio_for_budget(cfg, 512) <= 0.55
    assert len(specs) == 2
    for spec in specs:
        assert (spec["dtype"], spec["checkpointing"], spec["loss_chunk"], spec["context_chunk"]) == ("bf16", True, 16, 64)


def test_ratio_for_budget_names_smallest_peak(monkeypatch):
    from tokenseek.bench import planner
    from tokenseek.train.config import TrainConfig

    # peak = 100 MiB + 1000 MiB x ratio
    monkeypatch.setattr(planner, "measure_peaks", lambda *a, **k: {1.0: 1100 * 2**20, 0.1: 200 * 2**20})
    cfg = TrainConfig(model=None, peft="lora", memory_budget="650MiB")
    assert 0.54 <= planner.ratio_for_budget(cfg, 512) <= 0.55
    cfg.memory_budget = "100MB"  # 95.4 MiB: below even one token's worth
    with pytest.raises(TokenSeekError, match=r"smallest predicted peak is 110\.0 MiB"):
        planner.ratio_for_budget(cfg, 512)


@pytest.mark.parametrize(
    "text, expected",
    [("6GiB", 6 * 2**30), ("6 GB", 6 * 10**9), ("512MiB", 512 * 2**20), ("1.5gib", int(1.5 * 2**30)), ("800mb", 800 * 10**6)],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["6", "6XB", "GiB", "-1GiB", "0MB", "six GiB", ""])
def test_parse_budget_rejects(text):
    with pytest.raises(TokenSeekError):
        parse_budget(text)


def test_plan_fit_and_check():
    plan = make_plan({1.0: 1000.0, 0.1: 100.0, 0.5: 520.0}, budget=600)
    assert (round(plan.a), round(plan.b)) == (0, 1000)
    (check,) = plan.checks
    assert check["ratio"] == 0.5 and check["error"] == pytest.approx(500 / 520 - 1)
    assert plan.best_ratio() == 0.6
    assert make_plan({1.0: 1000.0, 0.1: 100.0}, budget=5000).best_ratio() == 1.0
    assert make_plan({1.0: 1000.0, 0.1: 100.0}, budget=5).best_ratio() is None


def test_plan_uses_the_optimizer_floor():
    # Full-parameter shape: forward/backward grows with the ratio, the optimizer update does not.
    point = lambda fb, opt: {"peak": max(fb, opt), "forward_backward": fb, "optimizer": opt}  # noqa: E731
    plan = make_plan({1.0: point(3000, 2200), 0.1: point(1200, 2200), 0.05: point(1100, 2200)}, budget=2500)
    assert plan.predict(0.05) == 2200 and plan.checks[0]["error"] == 0
    assert plan.predict(1.0) == 3000
    assert plan.best_ratio() == pytest.approx(0.75)  # 1000 + 2000 x 0.75 = 2500
    assert make_plan({1.0: point(3000, 2200), 0.1: point(1200, 2200)}, budget=2100).best_ratio() is None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["bench", "--ratios", "1.0,1.5"], "--ratios must be greater than 0 and at most 1, got 1.5"),
        (["bench", "--ratios", "0"], "--ratios must be greater than 0 and at most 1, got 0.0"),
        (["bench", "--ratios", "half"], "--ratios"),
        (["bench", "--peft", "lora,bogus"], "unknown --peft"),
        (["bench", "--warmup", "0"], "--warmup"),
        (["bench", "--peft", "lora,loha", "--peft-arg", "use_dora=true"], "unknown --peft-arg 'use_dora' for --peft loha"),
        (["plan", "--budget", "1GiB", "--peft-arg", "r=2"], "set it with --lora-r"),
        (["plan", "--budget", "6XB"], "memory budget '6XB' not understood"),
        (["plan", "--budget", "lots"], "not understood"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    assert main(argv + (["--output", str(tmp_path / "o")] if argv[0] == "bench" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tokenseek: error:") and needle in err


def test_replay_counts_allocations_inside_the_step():
    device = torch.device("cpu")
    keep = torch.zeros(1000)  # live before the step: part of the baseline
    with memory.measure_step_memory(device) as measured:
        tmp = torch.empty(1_000_000)  # 4 MB, freed before the step ends
        del tmp
    m = measured["memory"]
    assert m.peak_bytes - m.baseline_bytes >= 4_000_000
    assert m.end_bytes == m.baseline_bytes
    assert m.baseline_bytes <= m.average_bytes <= m.peak_bytes
    del keep


def test_saved_tensors_exclude_parameters():
    layer = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16, requires_grad=True)
    with memory.count_saved_tensors(layer) as saved:
        y = torch.relu(layer(x))
    # linear saves its input (x) and weight; relu saves its output.
    assert saved.activation_bytes == x.numel() * 4 + y.numel() * 4
    assert saved.parameter_bytes == layer.weight.numel() * 4


def test_bench_measures_the_adapter_peft_args_configure(tiny_model, tmp_path):
    """--peft-arg reaches the workers' adapters: DoRA's magnitude vectors are trained parameters too."""
    out = {}
    for name, extra in (("lora", []), ("dora", ["--peft-arg", "use_dora=true"])):
        argv = ["bench", "--model", tiny_model, "--peft", "lora,none", "--seq-len", "32", "--ratios", "1.0", "--steps", "1",
                "--no-score", "--output", str(tmp_path / name), *extra]
        assert main(argv) == 0
        doc = json.loads((tmp_path / name / "bench.json").read_text())
        out[name] = {g["peft"]: g for g in doc["groups"]}
        assert all("error" not in r for g in doc["groups"] for r in g["rows"])
    assert out["dora"]["lora"]["rows"][0]["spec"]["lora"]["extra"] == {"use_dora": True}
    lora_params, dora_params = (out[name]["lora"]["rows"][0]["params"]["trainable_params"] for name in ("lora", "dora"))
    assert dora_params > lora_params  # one magnitude per output feature of each adapted layer
    assert out["dora"]["none"]["rows"][0]["params"] == out["lora"]["none"]["rows"][0]["params"]


def test_bench_and_plan_read_a_peft_config_file(tiny_model, tmp_path, caplog):
    """--peft-config in bench builds the adapter the file describes (its method and settings
    reach the workers); plan resolves it as train does and refuses what train refuses."""
    import argparse

    import peft

    from tokenseek.cli.common import adapter_from_args, add_adapter_args

    given = tmp_path / "loha"
    peft.LoHaConfig(task_type="CAUSAL_LM", r=2, alpha=6, target_modules=["q_proj", "v_proj"], rank_dropout=0.1).save_pretrained(given)
    out = tmp_path / "bench"
    argv = ["bench", "--model", tiny_model, "--seq-len", "32", "--ratios", "1.0", "--steps", "1", "--no-score",
            "--output", str(out), "--peft-config", str(given)]
    assert main(argv) == 0
    (group,) = json.loads((out / "bench.json").read_text())["groups"]
    assert group["peft"] == "loha"  # the file's method replaced the default --peft lora
    spec = group["rows"][0]["spec"]["lora"]
    assert (spec["r"], spec["alpha"], sorted(spec["target_modules"]), spec["extra"]) == (2, 6, ["q_proj", "v_proj"], {"rank_dropout": 0.1})

    def resolve(*flags, pefts=("lora",)):
        parser = argparse.ArgumentParser()
        add_adapter_args(parser)
        return adapter_from_args(parser.parse_args(["--peft-config", str(lora), *flags]), list(pefts))

    lora = tmp_path / "lora"
    peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=12, lora_dropout=0.0).save_pretrained(lora)
    methods, kwargs = resolve(pefts=("lora", "qlora", "none"))
    assert methods == ["lora", "qlora", "none"] and (kwargs["r"], kwargs["alpha"], kwargs["dropout"]) == (4, 12, 0.0)
    for flags, pefts, needle in (
        (("--lora-r", "16"), ("lora",), "--peft-config sets the adapter: drop --lora-r"),
        ((), ("loha",), "--peft loha does not fit --peft-config's lora adapter"),
        ((), ("none",), "--peft none trains every parameter"),
    ):
        with pytest.raises(TokenSeekError, match=re.escape(needle)):
            resolve(*flags, pefts=pefts)

    bench_json = tmp_path / "plan-from" / "bench.json"
    bench_json.parent.mkdir()
    bench_json.write_text((out / "bench.json").read_text())
    with caplog.at_level("WARNING"):
        main(["plan", "--budget", "1GiB", "--from-bench", str(bench_json), "--peft-config", str(lora)])
    assert any("--peft-config" in r.message and "has no effect" in r.message for r in caplog.records)


def test_knobs_table_relates_every_setting_to_the_baseline(tiny_model, tmp_path):
    """Structure and exact-memory relations of `bench --knobs online` (never timings). The checkpointing /
    chunked-CE relations of the 'memory' preset are tested directly in test_memory_knobs.py."""
    out = tmp_path / "knobs"
    assert main(["bench", "--knobs", "online", "--model", tiny_model, "--seq-len", "128", "--steps", "1", "--output", str(out)]) == 0
    doc = json.loads((out / "knobs.json").read_text())
    (g,) = doc["groups"]
    rows = {r["setting"]: r for r in g["rows"]}
    assert list(rows) == [
        "full-token", "TokenSeek 10 %, offline scores", "TokenSeek 10 %, online seeking", "TokenSeek 10 %, online seeking, α,β = 1,0",
    ]
    assert rows["full-token"]["relative"]["peak_bytes"] == rows["full-token"]["relative"]["step_peak_bytes"] == 1.0
    for r in rows.values():
        assert "error" not in r["result"], r["result"].get("error")
        assert r["relative"]["peak_bytes"] == r["result"]["memory"]["peak_bytes"] / rows["full-token"]["result"]["memory"]["peak_bytes"]
    assert rows["TokenSeek 10 %, offline scores"]["result"]["tokens"]["kept"] == 13  # ceil(0.1 * 128)
    assert rows["TokenSeek 10 %, offline scores"]["relative"]["activation_bytes"] < 0.5
    assert "ratios against **full-token**" in (out / "knobs.md").read_text()
    # Where the peak falls: the ditched step's passes mark themselves; full-token has no context pass.
    phases = {name: r["result"]["memory"]["phase_peak_bytes"] for name, r in rows.items()}
    assert set(phases["full-token"]) == {"tokenseek_bench_backward"}
    for name in list(rows)[1:]:
        assert set(phases[name]) == {"tokenseek::context_pass", "tokenseek::kept_pass", "tokenseek_bench_backward"}
        assert max(phases[name].values()) <= rows[name]["result"]["memory"]["peak_bytes"]
