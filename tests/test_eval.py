"""``tokenseek eval``: local lm-eval tasks, model/adapter loading, held-out loss, tables, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _shared_data import shared_data_dir  # tests/ is on sys.path (pytest's rootdir insertion)
from tokenseek.cli.main import main
from tokenseek.eval.catalog import CATALOG, TASKS_DIR, resolve_data_dir
from tokenseek.eval.harness import evaluate_tasks
from tokenseek.eval.heldout import heldout_loss
from tokenseek.eval.report import paper_table
from tokenseek.errors import TokenSeekError


# ----------------------------------------------------------------------------- fixtures
def _tiny_llama(tokenizer, hidden: int = 32, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,  # 25-shot ARC prompts are ~1.5k tokens
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from tokenseek.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return _tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny_llama")
    _tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def eval_data():
    return shared_data_dir("eval")


def _run_cli(argv, capsys):
    capsys.readouterr()  # drop what the test's own setup printed (save/load progress bars)
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("tokenseek: error: ")
    return lines[0]


# ----------------------------------------------------------------------------- task definitions
def test_task_yamls_register_every_catalog_task():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    missing = [t.lm_eval_name for t in CATALOG.values() if t.lm_eval_name not in manager.all_tasks]
    assert not missing
    assert len([n for n in manager.all_subtasks if n.startswith("tokenseek_mmlu_")]) == 57


def test_utilitarianism_prompt_matches_lm_eval():
    lm_utils = pytest.importorskip("lm_eval.tasks.hendrycks_ethics.utils")
    from tokenseek.eval.tasks import utils

    for doc in ({"activity": "I won the game.", "baseline": "I lost the game.", "rating": ""}, {"activity": "a", "baseline": "b", "rating": ""}):
        assert utils.utilitarianism_doc_to_text(doc) == lm_utils.doc_to_text(doc)
        assert utils.utilitarianism_doc_to_target(doc) == lm_utils.doc_to_target(doc)


@pytest.mark.shared_data
def test_hellaswag_prompt_matches_lm_eval_processing(eval_data):
    """The first validation item, as the Hub has it, through lm-eval's own process_docs."""
    import datasets

    lm_utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    from tokenseek.eval.tasks import utils

    hub_row = {
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
        "label": "3",
    }
    theirs = lm_utils.process_docs(datasets.Dataset.from_list([hub_row]))[0]
    ours = utils.load_hellaswag(tokenseek_data_dir=str(eval_data))["validation"][0]
    assert ours["query"] == theirs["query"]
    assert ours["endings"] == theirs["choices"] and ours["label"] == theirs["gold"]


def _mc2_choice_counts(data_dir, n):
    items = json.loads((data_dir / "truthfulqa" / "mc_task.json").read_text())
    return sum(len(item["mc2_targets"]) for item in items[:n])


# name, limit, expected items, requests per item (None: computed), metric, default shots
LOCAL_CASES = [
    ("arc_challenge", 2, 2, 4, "acc_norm", 25),
    ("arc_easy", 2, 2, 4, "acc_norm", 25),
    ("hellaswag", 2, 2, 4, "acc_norm", 10),
    ("ethics", 5, 5, 2, "acc", 5),  # one item per subtask
    ("truthfulqa_mc2", 2, 2, None, "acc", 0),
    ("winogrande", 3, 3, 2, "acc", 0),
    ("mmlu", 2, 57, 4, "acc", 5),  # at least one item per subject
]


@pytest.mark.shared_data
@pytest.mark.parametrize("name,limit,items,per_item,metric,shots", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_local_task_runs_through_lm_eval(tiny, tokenizer, eval_data, name, limit, items, per_item, metric, shots):
    out = evaluate_tasks(tiny, tokenizer, name, data_dir=eval_data, limit=limit, batch_size=2)
    rec = out["tasks"][name]
    assert rec["metric"] == metric and rec["lm_eval_task"] == CATALOG[name].lm_eval_name
    assert 0.0 <= rec["value"] <= 1.0
    assert rec["items"] == items and rec["shots"] == shots
    expected = per_item * items if per_item else _mc2_choice_counts(eval_data, items)
    assert rec["requests"] == expected
    assert rec["source"] == "local files" and out["data_dir"] == str(eval_data.resolve())
    if shots:
        assert "dev split" in rec["fewshot_source"] if name == "mmlu" else "excluding the scored item" in rec["fewshot_source"]
    if name in ("ethics", "mmlu"):
        assert len(rec["subtasks"]) == (5 if name == "ethics" else 57)
    if name == "mmlu":  # micro-average of 0/1 scores: binomial stderr even with one item per subject
        p = rec["value"]
        assert rec["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (items - 1)))


@pytest.mark.shared_data
def test_same_split_fewshot_never_shows_the_scored_item(eval_data):
    """lm-eval drops the scored item only when fewshot_split == test_split; check both."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"tokenseek_data_dir": str(eval_data)})
    for name in ("tokenseek_arc_challenge", "tokenseek_hellaswag", "tokenseek_ethics_justice", "tokenseek_winogrande"):
        task = manager.load([name])["tasks"][name]
        assert task.fewshot_cfg.split == task.config.test_split
    task = manager.load(["tokenseek_ethics_justice"])["tasks"]["tokenseek_ethics_justice"]
    docs = list(task.eval_docs)
    doc = docs[3]
    shots = task.sampler.sample(n=len(docs) - 2, eval_doc=doc)  # nearly the whole pool
    assert doc not in shots and len(shots) == len(docs) - 2


@pytest.mark.shared_data
def test_num_fewshot_per_task_and_paper_table(tiny, tokenizer, eval_data):
    out = evaluate_tasks(tiny, tokenizer, "arc_challenge,winogrande", data_dir=eval_data, limit=2, num_fewshot={"arc_challenge": 0}, batch_size=2)
    arc = out["tasks"]["arc_challenge"]
    assert arc["shots"] == 0 and arc["fewshot_source"] == "none (0-shot)"
    table = paper_table({"tiny": out})
    assert "| tiny | " in table and "ETHICS" in table and "*" in table  # average of 2 of 5 columns


@pytest.mark.shared_data
def test_mmlu_refuses_more_shots_than_its_dev_split(tiny, tokenizer, eval_data):
    with pytest.raises(TokenSeekError, match="only 5 few-shot"):
        evaluate_tasks(tiny, tokenizer, "mmlu", data_dir=eval_data, limit=1, num_fewshot={"mmlu": 6})


# ----------------------------------------------------------------------------- CLI
@pytest.mark.shared_data
def test_cli_writes_results_json_and_markdown(tiny_dir, eval_data, tmp_path, capsys):
    out = tmp_path / "res.json"
    code, stdout, _ = _run_cli(["eval", "--model", str(tiny_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir", str(eval_data), "--output", str(out)], capsys)
    assert code == 0
    results = json.loads(out.read_text())
    rec = results["tasks"]["winogrande"]
    assert {"metric", "value", "stderr", "items", "shots", "requests", "fewshot_source"} <= set(rec)
    assert rec["items"] == 2 and rec["requests"] == 4
    assert out.with_suffix(".md").read_text().startswith("| Model | ARC")
    assert "WinoGrande" in stdout


def test_unknown_task_is_one_line_error(tiny_dir, tmp_path, capsys):
    code, _, err = _run_cli(["eval", "--model", str(tiny_dir), "--tasks", "no_such_task_xyz", "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    line = _error_line(err)
    assert "no_such_task_xyz" in line and "arc_challenge" in line and "hellaswag" in line


def test_missing_data_file_is_one_line_error(tiny_dir, tmp_path, capsys):
    (tmp_path / "arc").mkdir()  # but no arc_challenge.jsonl
    code, _, err = _run_cli(["eval", "--model", str(tiny_dir), "--tasks", "arc_challenge", "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    line = _error_line(err)
    assert "arc_challenge.jsonl" in line and "--data-dir" in line


def test_no_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENSEEK_EVAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared/data/eval here
    with pytest.raises(TokenSeekError, match="--data-dir"):
        resolve_data_dir(None)
    monkeypatch.setenv("TOKENSEEK_EVAL_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve()


def _save_lora(model, path):
    import peft

    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=2, lora_alpha=4, target_modules="all-linear")
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():  # non-zero B so the adapter changes the outputs
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    wrapped.save_pretrained(path)
    return wrapped


def test_adapter_for_a_different_base_is_one_line_error(tokenizer, tiny_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other_base"
    _tiny_llama(tokenizer, hidden=48).save_pretrained(other)
    _save_lora(AutoModelForCausalLM.from_pretrained(other), tmp_path / "adapter")  # records other as its base
    code, _, err = _run_cli(["eval", "--model", str(tiny_dir), "--adapter", str(tmp_path / "adapter"), "--tasks", "winogrande"], capsys)
    assert code == 2
    assert "different model" in _error_line(err)
    # Without a checkable base path the shape mismatch itself is reported.
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = None
    cfg_path.write_text(json.dumps(cfg))
    code, _, err = _run_cli(["eval", "--model", str(tiny_dir), "--adapter", str(tmp_path / "adapter"), "--tasks", "winogrande"], capsys)
    assert code == 2
    assert "does not fit this base model" in _error_line(err)


def test_adapter_and_training_run_folder_load_the_adapted_model(tokenizer, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tokenseek.eval.model import load_for_eval

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    wrapped = _save_lora(base, tmp_path / "run" / "model")
    (tmp_path / "run" / "run_config.json").write_text(json.dumps({"model": str(tiny_dir), "peft": "lora"}))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = wrapped(input_ids=ids).logits
    for model_arg, adapter_arg in ((str(tiny_dir), str(tmp_path / "run" / "model")), (str(tmp_path / "run"), None)):
        lm, _, info = load_for_eval(model_arg, adapter_arg)
        assert info["adapter"] == str(tmp_path / "run" / "model")
        with torch.no_grad():
            torch.testing.assert_close(lm(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_qlora_run_is_evaluated_on_nf4_base_without_repacking(tokenizer, tiny_dir, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from tokenseek.eval.model import load_for_eval

    _save_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "run" / "model")
    (tmp_path / "run" / "train_summary.json").write_text(json.dumps({"peft": "qlora"}))
    (tmp_path / "run" / "run_config.json").write_text(json.dumps({"model": str(tiny_dir), "peft": "qlora"}))
    lm, _, info = load_for_eval(str(tmp_path / "run"))
    assert info["quantize"] == "nf4"
    layers = [m for m in lm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)


# ----------------------------------------------------------------------------- held-out loss
def test_heldout_loss_matches_an_independent_computation(tiny, tokenizer):
    from tokenseek.data import load_records, tokenize_records

    records = load_records(None)[:5]
    got = heldout_loss(tiny, tokenizer, records, max_length=64, batch_size=2)

    # Independent: one example at a time, HF's own shifted loss (a per-token mean), re-weighted by tokens.
    data = tokenize_records(records, tokenizer, max_length=64)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ex in data.examples:
            labels = torch.tensor([ex["labels"]])
            n = int((labels[0, 1:] != -100).sum())
            loss = tiny(input_ids=torch.tensor([ex["input_ids"]]), labels=labels).loss.item()
            total, tokens = total + loss * n, tokens + n
    assert got["tokens"] == tokens and got["examples"] == len(data.examples)
    assert got["loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)
    assert not tiny.training


def test_heldout_loss_of_a_model_without_a_findable_decoder(tiny, tokenizer, monkeypatch):
    """The LM head is applied to response rows only when the decoder body can be hooked; a
    model without ``get_decoder`` falls back to its own logits, with the same result."""
    from tokenseek.data import load_records

    records = load_records(None)[:5]
    expected = heldout_loss(tiny, tokenizer, records, max_length=64, batch_size=2)
    monkeypatch.setattr(tiny, "get_decoder", lambda: None)
    calls = []
    forward = tiny.forward
    monkeypatch.setattr(tiny, "forward", lambda *a, **k: calls.append(k.get("logits_to_keep")) or forward(*a, **k))
    got = heldout_loss(tiny, tokenizer, records, max_length=64, batch_size=2)
    assert calls and all(keep is None for keep in calls)  # full logits: the fallback ran
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5) and got["tokens"] == expected["tokens"]


def test_cli_heldout_only(tiny_dir, tmp_path, capsys):
    data = tmp_path / "held.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi there!"}, {"instruction": "Add 2 and 2.", "input": "", "output": "4"}]))
    out = tmp_path / "res.json"
    code, stdout, _ = _run_cli(["eval", "--model", str(tiny_dir), "--heldout", str(data), "--output", str(out)], capsys)
    assert code == 0
    held = json.loads(out.read_text())["heldout"]
    assert held["examples"] == 2 and held["tokens"] > 0 and held["perplexity"] == pytest.approx(math.exp(held["loss"]))
    assert "tasks" not in json.loads(out.read_text())
    assert "held-out loss" in stdout


def test_cli_names_options_the_evaluation_never_reads(tiny_dir, tmp_path, capsys, caplog):
    data = tmp_path / "held.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi there!"}]))
    argv = ["eval", "--model", str(tiny_dir), "--heldout", str(data), "--num-fewshot", "5", "--max-new-tokens", "8", "--batch-size", "2"]
    code, _, _ = _run_cli(argv, capsys)
    assert code == 0
    assert "--num-fewshot 5 has no effect: no benchmark runs (give --tasks)" in caplog.text
    assert "--max-new-tokens 8 has no effect: it is the answer length of --exact-match" in caplog.text
    assert "--batch-size" not in caplog.text  # read by the held-out loss


@pytest.mark.parametrize(
    "settings, ignored",
    [
        ({"heldout": "h.json", "exact_match": True, "max_new_tokens": 8, "max_length": 64}, set()),
        ({"heldout": "h.json", "hub": True, "data_dir": "d", "lm_eval_model": "hf"}, {"--hub", "--data-dir", "--lm-eval-model"}),
        ({"heldout": "h.json", "tasks": "arc_easy", "num_fewshot": "5"}, set()),  # --tasks given: benchmarks run too
        ({"tasks": "arc_easy", "template": "chat", "max_length": 64, "fields": "output=answer"}, {"--template", "--max-length", "--fields"}),
        ({"num_fewshot": "5", "include_path": ["x"]}, set()),  # no --heldout: the paper's tasks run
    ],
)
def test_eval_config_names_what_it_never_reads(settings, ignored):
    from tokenseek.eval import EvalConfig

    lines = EvalConfig(**settings).ignored_options()
    assert {line.split()[0] for line in lines} == ignored


def test_library_run_eval_writes_what_the_cli_writes(tiny_dir, tmp_path, capsys):
    """`run_eval(EvalConfig(...))` is the CLI's job: same results for the same settings,
    the shared example-building ones (--max-length here) included."""
    from tokenseek.eval import EvalConfig, run_eval

    data = tmp_path / "held.json"
    long_answer = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    data.write_text(json.dumps([{"instruction": "Repeat the sentence.", "input": "", "output": long_answer}, {"instruction": "Add 2 and 2.", "input": "", "output": "4"}]))
    code, _, _ = _run_cli(["eval", "--model", str(tiny_dir), "--heldout", str(data), "--max-length", "64", "--output", str(tmp_path / "cli.json")], capsys)
    assert code == 0
    returned = run_eval(EvalConfig(model=str(tiny_dir), heldout=str(data), max_length=64, output=str(tmp_path / "lib.json")))
    cli, lib = (json.loads((tmp_path / name).read_text()) for name in ("cli.json", "lib.json"))
    for results in (cli, lib, returned):
        results.pop("wall_time_s")
    assert lib == cli == json.loads(json.dumps(returned))
    assert lib["heldout"]["tokens"] < 64  # the long answer was cut at --max-length 64
    assert (tmp_path / "lib.md").read_text() == (tmp_path / "cli.md").read_text()


def test_eval_shares_trains_example_settings():
    from tokenseek.eval import EvalConfig
    from tokenseek.train.config import TrainConfig

    for name in ("model", "fields", "template", "max_length", "dtype"):
        assert getattr(EvalConfig(), name) == getattr(TrainConfig(), name), name


# ----------------------------------------------------------------------------- real model
@pytest.mark.slow
@pytest.mark.shared_data
def test_smollm2_beats_chance_on_arc_easy(eval_data):
    from tokenseek.models import load_model

    model, tok = load_model(None)
    out = evaluate_tasks(model, tok, "arc_easy", data_dir=eval_data, limit=20, num_fewshot={"arc_easy": 0}, batch_size=4)
    rec = out["tasks"]["arc_easy"]
    assert rec["items"] == 20
    assert rec["value"] > 0.25, rec  # four choices: chance is 0.25
