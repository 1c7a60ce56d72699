"""Dataset formats: detection, loss masks (checked against the rendered text), splits, training."""

from __future__ import annotations

import json

import pytest

from tokenseek.data import load_records, tokenize_records
from tokenseek.errors import TokenSeekError

from conversations import CONVERSATION, MARKED_TEMPLATE


@pytest.fixture(scope="module")
def tokenizer():
    from tokenseek.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture
def marked_tokenizer(tokenizer):
    import copy

    marked = copy.deepcopy(tokenizer)
    marked.chat_template = MARKED_TEMPLATE
    return marked


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _labelled_runs(example) -> list[list[int]]:
    """Maximal runs of consecutive tokens that carry a label."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def _replies_in_rendered_text(rendered: str, conversation: list[dict]) -> list[str]:
    """Each assistant reply as the rendered ChatML text has it: from its content to the next turn."""
    header, replies, cursor = "<|im_start|>assistant\n", [], 0
    for message in conversation:
        if message["role"] != "assistant":
            continue
        start = rendered.index(header + message["content"], cursor) + len(header)
        end = rendered.find("<|im_start|>", start)
        end = len(rendered) if end < 0 else end
        replies.append(rendered[start:end])
        cursor = end
    return replies


# --- detection ---------------------------------------------------------------------------------

def test_each_format_is_detected_and_loaded(tmp_path):
    cases = {
        "alpaca": [{"instruction": "i", "input": "", "output": "o", "text": "formatted"}],  # Alpaca dumps carry "text" too
        "messages": [{"messages": CONVERSATION, "id": 1}],
        "prompt_completion": [{"prompt": "2+2=", "completion": "4"}],
        "text": [{"text": "Just a document."}],
    }
    for fmt, rows in cases.items():
        records = load_records(str(_write_jsonl(tmp_path / f"{fmt}.jsonl", rows)))
        assert len(records) == 1
        assert set(records[0]) == {"alpaca": {"instruction", "input", "output"}, "messages": {"messages"},
                                   "prompt_completion": {"prompt", "completion"}, "text": {"text"}}[fmt]
    conv = load_records(str(_write_jsonl(tmp_path / "pc.jsonl", [{"prompt": CONVERSATION[:1], "completion": CONVERSATION[1:2]}])))
    assert conv == [{"prompt": CONVERSATION[:1], "completion": CONVERSATION[1:2]}]
    forced = load_records(str(tmp_path / "alpaca.jsonl"), format="text")
    assert forced == [{"text": "formatted"}]


def test_format_errors_are_one_line_and_name_the_columns(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(TokenSeekError) as err:
        load_records(str(path))
    message = str(err.value)
    assert "\n" not in message and "columns: answer, question" in message and "--fields" in message
    with pytest.raises(TokenSeekError, match="no 'messages' column for the messages format"):
        load_records(str(path), format="messages")
    with pytest.raises(TokenSeekError, match="unknown --format 'chatml'"):
        load_records(str(path), format="chatml")
    # Renaming one format's fields says which format is meant.
    assert load_records(str(path), fields="prompt=question,completion=answer") == [{"prompt": "q", "completion": "a"}]
    with pytest.raises(TokenSeekError, match="must be a list of"):
        load_records(str(_write_jsonl(tmp_path / "bad.jsonl", [{"messages": "hello"}])))
    with pytest.raises(TokenSeekError, match="built-in data is Alpaca"):
        load_records(None, format="messages")


def test_records_with_nothing_to_learn_are_skipped(tmp_path, caplog):
    rows = [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": CONVERSATION}]
    assert load_records(str(_write_jsonl(tmp_path / "m.jsonl", rows))) == [{"messages": CONVERSATION}]
    assert "skipped 1 record" in caplog.text


# --- split and subset ----------------------------------------------------------------------------

def test_split_slices_a_local_file_and_subset_is_refused(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": f"doc {i}"} for i in range(5)])
    assert [r["text"] for r in load_records(str(path), split="train[:2]")] == ["doc 0", "doc 1"]
    with pytest.raises(TokenSeekError, match="drop --subset"):
        load_records(str(path), subset="default")
    with pytest.raises(TokenSeekError, match="split 'test'"):
        load_records(str(path), split="test")


def test_dataset_folders_saved_by_datasets_or_holding_data_files(tmp_path):
    """save_to_disk folders (a Dataset: one split "train", like a file; a DatasetDict: its
    splits) and a folder of data files, each sliced by --split as a file is."""
    import datasets

    rows = [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(10)]
    single = datasets.Dataset.from_list(rows)
    single.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": single, "test": single.select(range(7, 10))}).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "files").mkdir()
    _write_jsonl(tmp_path / "files" / "train.jsonl", rows[:6])
    _write_jsonl(tmp_path / "files" / "test.jsonl", rows[6:])

    assert load_records(str(tmp_path / "single")) == rows
    assert load_records(str(tmp_path / "single"), split="train[:3]") == rows[:3]
    assert load_records(str(tmp_path / "dict"), split="test") == rows[7:]
    assert load_records(str(tmp_path / "dict"), split="train[50%:]") == rows[5:]
    assert load_records(str(tmp_path / "files"), split="test") == rows[6:]
    with pytest.raises(TokenSeekError, match="Unknown split"):
        load_records(str(tmp_path / "dict"), split="validation")
    with pytest.raises(TokenSeekError, match="drop --subset"):
        load_records(str(tmp_path / "single"), subset="default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenSeekError, match="could not read the dataset folder"):
        load_records(str(tmp_path / "empty"))


def test_hub_dataset_is_loaded_with_subset_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return datasets.Dataset.from_list([{"prompt": "p", "messages": CONVERSATION}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_records("HuggingFaceH4/ultrachat_200k", split="train_sft", subset="default")
    assert calls == [("HuggingFaceH4/ultrachat_200k", "default", "train_sft", {})]
    assert records == [{"messages": CONVERSATION}]


# --- loss masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("marked", [False, True], ids=["rendered-prefixes", "generation-markers"])
def test_three_turn_conversation_labels_exactly_the_assistant_replies(tokenizer, marked_tokenizer, marked):
    tok = marked_tokenizer if marked else tokenizer
    example = tokenize_records([{"messages": CONVERSATION}], tok).examples[0]
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert tok.decode(example["input_ids"]) == rendered  # the example is the template's text, whole
    expected = _replies_in_rendered_text(rendered, CONVERSATION)
    assert expected == ["Blue.<|im_end|>\n", "Green, mostly.<|im_end|>\n", "White\nas a rule.<|im_end|>\n"]
    assert [tok.decode(run) for run in _labelled_runs(example)] == expected
    unlabelled = tok.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label == -100])
    assert all(m["content"] in unlabelled for m in CONVERSATION if m["role"] != "assistant")
    assert "Green" not in unlabelled and "as a rule" not in unlabelled


def test_both_ways_of_finding_replies_agree(tokenizer, marked_tokenizer):
    plain = tokenize_records([{"messages": CONVERSATION}], tokenizer).examples[0]
    marked = tokenize_records([{"messages": CONVERSATION}], marked_tokenizer).examples[0]
    assert plain["input_ids"] == marked["input_ids"] and plain["labels"] == marked["labels"]


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    import copy

    forgetful = copy.deepcopy(tokenizer)
    # Drops every assistant reply but the last (as templates that strip old reasoning do).
    forgetful.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(TokenSeekError, match="generation"):
        tokenize_records([{"messages": CONVERSATION}], forgetful)


def test_prompt_completion_labels_the_completion(tokenizer):
    plain = tokenize_records([{"prompt": "The capital of France is", "completion": " Paris."}], tokenizer).examples[0]
    assert tokenizer.decode(_labelled_runs(plain)[0]) == " Paris." + tokenizer.eos_token
    assert len(_labelled_runs(plain)) == 1
    chat = tokenize_records([{"prompt": CONVERSATION[:3], "completion": CONVERSATION[3:4]}], tokenizer).examples[0]
    rendered = tokenizer.apply_chat_template(CONVERSATION[:4], tokenize=False)
    assert [tokenizer.decode(run) for run in _labelled_runs(chat)] == _replies_in_rendered_text(rendered, CONVERSATION[:4])[1:]


def test_text_labels_every_token(tokenizer):
    example = tokenize_records([{"text": "A plain document."}], tokenizer).examples[0]
    assert example["labels"] == example["input_ids"] and example["input_ids"][-1] == tokenizer.eos_token_id
    assert example["prompt_length"] == 0


def test_train_on_prompt_labels_the_whole_conversation(tokenizer):
    example = tokenize_records([{"messages": CONVERSATION}], tokenizer, train_on_prompt=True).examples[0]
    assert example["labels"] == example["input_ids"]


def test_template_option_is_for_alpaca_only(tokenizer):
    with pytest.raises(TokenSeekError, match="drop --template"):
        tokenize_records([{"messages": CONVERSATION}], tokenizer, template="chat")


def test_alpaca_tokenisation_is_unchanged(tokenizer):
    """Score stores and a running study depend on these fingerprints (measured before formats existed)."""
    records = load_records(None)
    assert tokenize_records(records, tokenizer).fingerprint() == "59a5b29177568d04"
    assert tokenize_records(records, tokenizer, template="chat").fingerprint() == "2f5dbf449965bcd6"
    assert tokenize_records(records, tokenizer, train_on_prompt=True).fingerprint() == "039fe4be7cd4c86f"
    assert tokenize_records(records, tokenizer, max_length=60).fingerprint() == "b71f8c6189d1ad1b"


# --- training --------------------------------------------------------------------------------------

FORMAT_ROWS = {
    "alpaca": [{"instruction": f"Add {a} and {a + 1}.", "input": "", "output": str(2 * a + 1)} for a in range(6)],
    "messages": [{"messages": CONVERSATION}] * 6,
    "prompt_completion": [{"prompt": f"{a} + {a} =", "completion": f" {2 * a}"} for a in range(6)],
    "text": [{"text": f"Document number {a} is short."} for a in range(6)],
}


@pytest.mark.parametrize("fmt", list(FORMAT_ROWS))
def test_each_format_trains_a_tiny_model(tmp_path, tiny_model_dir, fmt):
    from tokenseek.cli.main import main

    data = _write_jsonl(tmp_path / "data.jsonl", FORMAT_ROWS[fmt])
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out), "--format", fmt,
            "--selection", "random", "--ratio", "0.5", "--max-steps", "2", "--grad-accum", "2", "--max-length", "128"]
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["data_format"] == fmt and summary["steps"] == 2
    assert summary["final_loss"] is not None and summary["final_loss"] > 0
    assert json.loads((out / "run_config.json").read_text())["format"] == fmt


def test_auto_format_keeps_old_run_identity():
    from tokenseek.train.config import TrainConfig

    assert not {"format", "split", "subset"} & set(TrainConfig().identity())
    assert TrainConfig(format="messages", split="train_sft", subset="x").identity()["split"] == "train_sft"


def test_kept_tokens_come_from_the_replies(tokenizer):
    """--select-from targets: in a conversation only positions predicting a reply token are kept."""
    from tokenseek.seeking.select import keep_for_labels

    example = tokenize_records([{"messages": CONVERSATION}], tokenizer).examples[0]
    keep = keep_for_labels(example["labels"], 0.5, "random")
    predicts_reply = [label != -100 for label in example["labels"][1:]] + [False]
    assert keep.sum() == sum(predicts_reply)  # half the conversation is more than the replies: all of them
    assert all(p for p, k in zip(predicts_reply, keep) if k)


def test_score_then_train_on_conversations(tmp_path, tiny_model_dir):
    from tokenseek.cli.main import main

    data = _write_jsonl(tmp_path / "chat.jsonl", FORMAT_ROWS["messages"])
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--format", "messages", "--max-length", "128"]
    assert main(["score", *common, "--out", str(tmp_path / "scores")]) == 0
    argv = ["train", *common, "--scores", str(tmp_path / "scores"), "--output-dir", str(tmp_path / "run"),
            "--ratio", "0.2", "--max-steps", "1", "--grad-accum", "1"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["selection"] == "tokenseek" and summary["data_format"] == "messages"
    meta = json.loads((tmp_path / "scores" / "meta.json").read_text())
    assert meta["data"]["settings"]["format"] == "messages"
