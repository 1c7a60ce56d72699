"""Data: record loading, templates, tokenization and batching."""

from __future__ import annotations

import json

import pytest
import torch

from tokenseek.data import DitchingCollator, builtin_records, format_prompt, load_records, tokenize_records
from tokenseek.errors import TokenSeekError


@pytest.fixture(scope="module")
def tokenizer():
    from tokenseek.models import load_tokenizer

    return load_tokenizer(None)


def test_records_from_every_format(tmp_path):
    import pandas as pd

    rows = [{"question": "q1", "answer": "a1", "ctx": ""}, {"question": "q2", "answer": "a2", "ctx": "c2"}]
    frame = pd.DataFrame(rows)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.jsonl", "d.csv", "d.parquet", "d.json"):
        records = load_records(str(tmp_path / name), fields="instruction=question,output=answer,input=ctx")
        assert [r["instruction"] for r in records] == ["q1", "q2"]
        assert records[1] == {"instruction": "q2", "input": "c2", "output": "a2"}
        assert records[0]["input"] == ""


def test_records_with_empty_output_are_skipped(tmp_path, caplog):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "a", "output": ""}, {"instruction": "b", "output": "ok"}]))
    records = load_records(str(path))
    assert [r["instruction"] for r in records] == ["b"]
    assert "skipped 1 record" in caplog.text
    path.write_text(json.dumps([{"instruction": "a", "output": " "}]))
    with pytest.raises(TokenSeekError, match="no usable records"):
        load_records(str(path))


def test_builtin_records_are_deterministic():
    a, b = builtin_records(50, seed=1), builtin_records(50, seed=1)
    assert a == b and a != builtin_records(50, seed=2)
    assert all(r["output"] for r in a)
    sums = [r for r in builtin_records(400) if r["instruction"] == "Add the two numbers."]
    assert sums and all(int(r["output"]) == sum(map(int, r["input"].split(" and "))) for r in sums)


def test_alpaca_template_matches_paper():
    with_input = format_prompt({"instruction": "Do X.", "input": "Y", "output": "Z"})
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nDo X.\n\n### Input:\nY\n\n### Response:\n"
    )
    assert "### Input" not in format_prompt({"instruction": "Do X.", "input": "", "output": "Z"})


def test_tokenize_masks_prompt_and_truncates(tokenizer):
    records = [{"instruction": "Say hello.", "input": "", "output": "Hello there, friend!"}]
    data = tokenize_records(records, tokenizer, max_length=512)
    ex = data.examples[0]
    prompt_len = ex["prompt_length"]
    assert all(label == -100 for label in ex["labels"][:prompt_len])
    assert ex["labels"][prompt_len:] == ex["input_ids"][prompt_len:]
    assert ex["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex["input_ids"][prompt_len:-1]) == "Hello there, friend!"
    on_prompt = tokenize_records(records, tokenizer, train_on_prompt=True).examples[0]
    assert on_prompt["labels"] == on_prompt["input_ids"]
    cut = tokenize_records(records, tokenizer, max_length=prompt_len + 2)
    assert cut.truncated == 1 and len(cut.examples[0]["input_ids"]) == prompt_len + 2
    assert data.fingerprint() != cut.fingerprint()


def test_chat_template(tokenizer):
    data = tokenize_records([{"instruction": "Hi", "input": "", "output": "Hello"}], tokenizer, template="chat")
    text = tokenizer.decode(data.examples[0]["input_ids"])
    assert "<|im_start|>user" in text and text.rstrip().endswith("Hello<|im_end|>")


def test_collator_pads_and_targets_kept_positions():
    features = [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8], "keep": [True, False, True, False]},
        {"input_ids": [9, 10], "labels": [-100, 10], "keep": [True, True]},
    ]
    batch = DitchingCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["keep"].tolist() == [[True, False, True, False], [True, True, False, False]]
    # Kept position p is trained to predict token p+1.
    assert batch["shift_labels"].tolist() == [[6, -100, 8, -100], [10, -100, -100, -100]]
    no_keep = DitchingCollator(0)([{"input_ids": [1, 2], "labels": [1, 2]}])
    assert torch.equal(no_keep["keep"], torch.tensor([[True, True]]))
