"""``tokenseek visualize``: example HTML + figures, score-store summary, loss curves, bad input."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from tokenseek.cli.main import main

pytest.importorskip("matplotlib")

RECORDS = [
    {"instruction": "Add the two numbers.", "input": "3 and 4", "output": "3 + 4 = 7.\nThe answer is 7."},
    {"instruction": "Escape <b>this</b> & \"that\".", "input": "a < b > c\n\tindented line", "output": "Escaped: &lt;b&gt; and <i>tags</i>.\n\nDone."},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Reverse the word 'river'.", "input": "", "output": "revir"},
    {"instruction": "Sort: pear, apple, fig.", "input": "", "output": "apple, fig, pear"},
    {"instruction": "Count the letters in 'castle'.", "input": "", "output": "There are 6 letters."},
]
EXAMPLE_PNGS = ("attention.png", "gradient_map.png", "context_score.png", "gradient_score.png", "gradient_layers.png")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    from tokenseek.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "records.json"
    path.write_text(json.dumps(RECORDS))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dir, data_file):
    out = tmp_path_factory.mktemp("stores") / "scores"
    assert main(["score", "--model", str(tiny_dir), "--data", str(data_file), "--out", str(out), "--batch-size", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory, tiny_dir, data_file):
    out = tmp_path_factory.mktemp("example") / "ex1"
    assert main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--index", "1", "--layers", "--output", str(out)]) == 0
    return out


def _tokenized(tokenizer, limit=None):
    from tokenseek.data import tokenize_records

    return tokenize_records(RECORDS[:limit] if limit else RECORDS, tokenizer)


def _check_png(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path
    assert float(image[..., :3].std()) > 0, f"{path} is blank"


def _error_line(err: str) -> str:
    # Progress bars (model loading) may precede the error; the error itself is one line.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("tokenseek: error: ")
    return lines[0]


class _TokenSpans(HTMLParser):
    """Collect the text of every ``span.tok`` inside each ``div.text`` panel, by panel id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.panels: dict[str, list[dict]] = {}
        self.tags: list[str] = []
        self._panel = None
        self._depth = 0  # open spans inside the current token span
        self._token = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "text" in classes:
            self._panel = attrs["id"]
            self.panels[self._panel] = []
        elif tag == "span" and self._token is not None:
            self._depth += 1
        elif tag == "span" and self._panel and "tok" in classes:
            self._token = {"text": "", "classes": classes, "title": attrs.get("title"), "i": int(attrs["data-i"])}
            self._depth = 0

    def handle_endtag(self, tag):
        if tag == "span" and self._token is not None:
            if self._depth:
                self._depth -= 1
            else:
                self.panels[self._panel].append(self._token)
                self._token = None
        elif tag == "div" and self._panel and self._token is None:
            self._panel = None

    def handle_data(self, data):
        if self._token is not None:
            self._token["text"] += data


def _parse_html(path) -> _TokenSpans:
    parser = _TokenSpans()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


# ----------------------------------------------------------------------------- one example
def test_example_writes_every_output(example_dir):
    names = {p.name for p in example_dir.iterdir()}
    assert {"tokens.html", "example.json", *EXAMPLE_PNGS} <= names
    assert not [n for n in names if n.startswith(".")]
    for name in EXAMPLE_PNGS:
        _check_png(example_dir / name)


def test_tokens_html_has_every_token_in_order(example_dir, tokenizer):
    from tokenseek.visualize.html import NEWLINE_MARK

    example = _tokenized(tokenizer).examples[1]
    expected = [tokenizer.decode([t]) for t in example["input_ids"]]
    parsed = _parse_html(example_dir / "tokens.html")
    assert set(parsed.panels) == {"overlay", "panel-context", "panel-gradient", "panel-combined"}
    for panel, spans in parsed.panels.items():
        shown = [span["text"].replace(NEWLINE_MARK + "\n", "\n") for span in spans]
        assert shown == expected, panel
        assert [span["i"] for span in spans] == list(range(len(expected)))
    # Markup inside the data is escaped, never parsed as tags.
    assert not {"b", "i"} & set(parsed.tags)
    raw = (example_dir / "tokens.html").read_text()
    assert "&lt;" in raw and "&gt;" in raw and "&amp;" in raw


def test_tokens_html_marks_each_selection(example_dir, tokenizer):
    example = _tokenized(tokenizer).examples[1]
    n = len(example["input_ids"])
    k = math.ceil(0.1 * n)
    saved = json.loads((example_dir / "example.json").read_text())
    parsed = _parse_html(example_dir / "tokens.html")
    overlay = parsed.panels["overlay"]
    for name, css in (("context", "ctx"), ("gradient", "grad"), ("combined", "comb")):
        marked = [s["i"] for s in overlay if css in s["classes"]]
        assert marked == saved["kept"][name] and len(marked) == k
        assert [s["i"] for s in parsed.panels[f"panel-{name}"] if css in s["classes"]] == marked
    # Scores on hover, prompt/response boundary, legend and settings.
    assert all(s["title"] and "context" in s["title"] and "gradient" in s["title"] for s in overlay)
    assert [s["i"] for s in overlay if "response" in s["classes"]][0] == example["prompt_length"]
    raw = (example_dir / "tokens.html").read_text()
    assert 'class="boundary"' in raw and "legend" in raw and "ratio 0.1" in raw and "&alpha; = 1" in raw


def test_example_scores_match_the_scorer_and_attention_map(tiny_dir, tokenizer):
    """The eager attention map's column sums are the context scores (Eq. 3)."""
    from tokenseek.models import load_model
    from tokenseek.seeking.select import select_keep
    from tokenseek.visualize import compute_example

    model, tok = load_model(str(tiny_dir))
    example = _tokenized(tokenizer).examples[0]
    view = compute_example(model, tok, example, position=0, ratio=0.25, layers=True, select_from="all")
    n = len(example["input_ids"])
    assert view.attention.shape == (n, n) and view.grad_map.shape == (n, 32)
    np.testing.assert_allclose(view.attention.sum(axis=0), view.context, rtol=1e-4, atol=1e-5)
    assert np.allclose(np.triu(view.attention, 1), 0)
    np.testing.assert_allclose(np.abs(view.grad_map).sum(-1), view.gradient, rtol=1e-5)
    assert sorted(view.layer_gradients) == [1, 2]  # a 2-layer model has no N-3
    np.testing.assert_allclose(view.layer_gradients[1], view.gradient)
    assert (view.keep["context"] == select_keep(n, 0.25, "context", context=view.context, gradient=view.gradient)).all()
    assert model.config._attn_implementation == "sdpa"  # the eager switch is undone


@pytest.mark.parametrize("select_from", ["targets", "targets-first", "all"])
def test_example_shows_the_tokens_training_keeps(tiny_dir, tokenizer, select_from):
    """The highlighted selection is the one `tokenseek train` makes from the same scores and
    --select-from (the default included), not the paper's rule regardless."""
    from tokenseek.models import load_model
    from tokenseek.seeking.select import DEFAULT_SELECT_FROM, keep_for_labels, target_positions
    from tokenseek.visualize import compute_example

    model, tok = load_model(str(tiny_dir))
    example = _tokenized(tokenizer).examples[0]
    view = compute_example(model, tok, example, position=0, ratio=0.25, select_from=select_from)
    stored = {"context": view.context, "gradient": view.gradient}
    trained = keep_for_labels(example["labels"], 0.25, "tokenseek", select_from=select_from, stored=stored)
    assert np.array_equal(view.keep["combined"], trained) and view.select_from == select_from
    targets = target_positions(example["labels"])
    if select_from == "targets":
        assert not (view.keep["combined"] & ~targets).any()
    if select_from != "all":
        assert view.keep["combined"][targets].sum() == min(targets.sum(), math.ceil(0.25 * len(targets)))
    default = compute_example(model, tok, example, position=0, ratio=0.25)
    assert default.select_from == DEFAULT_SELECT_FROM


def test_example_with_stored_scores(tiny_dir, data_file, store, tmp_path):
    from tokenseek.seeking.store import ScoreStore

    out = tmp_path / "stored"
    argv = ["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--index", "0", "--scores", str(store), "--ratio", "0.3", "--output", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "example.json").read_text())
    assert saved["score_source"] == str(store) and saved["ratio"] == 0.3
    row = ScoreStore.open(store).get(saved["record_index"])
    np.testing.assert_allclose(saved["context"], row["context"], rtol=1e-6)
    np.testing.assert_allclose(saved["gradient"], row["gradient"], rtol=1e-6)
    assert "gradient_layers.png" not in {p.name for p in out.iterdir()}


def test_rerun_replaces_outputs_and_drops_stale_files(tiny_dir, data_file, tmp_path):
    out = tmp_path / "again"
    base = ["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--output", str(out)]
    assert main([*base, "--index", "2", "--layers"]) == 0
    assert (out / "gradient_layers.png").is_file()
    (out / "notes.txt").write_text("mine")
    assert main([*base, "--index", "3"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "gradient_layers.png" not in names and "notes.txt" in names
    assert json.loads((out / "example.json").read_text())["position"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- summary
def test_summary_over_a_score_store(tiny_dir, data_file, store, tmp_path, tokenizer):
    out = tmp_path / "summary"
    argv = ["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--scores", str(store), "--summary", "--select-from", "all"]
    assert main([*argv, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    data = _tokenized(tokenizer)
    assert summary["examples"] == len(data)
    total = sum(len(ex["input_ids"]) for ex in data.examples)
    prompt = sum(ex["prompt_length"] for ex in data.examples)
    assert summary["tokens"]["total"] == total and summary["tokens"]["prompt"] == prompt
    kept = sum(math.ceil(0.1 * len(ex["input_ids"])) for ex in data.examples)
    for name in ("context", "gradient", "combined"):
        share = summary["share"][name]
        assert share["kept"] == kept and share["kept_in_prompt"] + share["kept_in_response"] == kept
        assert share["prompt"] + share["response"] == pytest.approx(1.0)
        assert sum(summary["positions"]["counts"][name]) == kept
        assert summary["top_tokens"][name] and sum(t["kept"] for t in summary["top_tokens"][name]) <= kept
    assert summary["share"]["all tokens"]["prompt"] == pytest.approx(prompt / total)
    assert 0.0 <= summary["overlap"]["context_vs_gradient"]["mean_jaccard"] <= 1.0
    md = (out / "summary.md").read_text()
    assert "| context |" in md and "Jaccard" in md and "Most frequently kept tokens" in md
    _check_png(out / "positions.png")


def test_summary_says_where_in_the_answer_the_kept_targets_fall(tiny_dir, data_file, store, tmp_path, tokenizer):
    """Ranking targets only, every kept position has a target, so the fifths of the answer count
    them all; keeping every target reproduces the distribution of all targets."""
    base = ["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--scores", str(store), "--summary", "--select-from", "targets"]
    data = _tokenized(tokenizer)
    targets = sum(sum(1 for label in ex["labels"][1:] if label != -100) for ex in data.examples)
    assert main([*base, "--output", str(tmp_path / "tenth")]) == 0
    summary = json.loads((tmp_path / "tenth" / "summary.json").read_text())
    answer = summary["answer_positions"]
    assert sum(answer["counts"]["all targets"]) == targets
    for name in ("context", "gradient", "combined"):
        assert sum(answer["counts"][name]) == summary["share"][name]["kept"] < targets
    assert "Where in the answer the kept targets fall" in (tmp_path / "tenth" / "summary.md").read_text()
    assert main([*base, "--ratio", "1.0", "--output", str(tmp_path / "all")]) == 0
    answer = json.loads((tmp_path / "all" / "summary.json").read_text())["answer_positions"]
    for name in ("context", "gradient", "combined"):
        assert answer["counts"][name] == answer["counts"]["all targets"]
        assert answer["mean"][name] == pytest.approx(answer["mean"]["all targets"])


def test_library_run_visualize_writes_what_the_cli_writes(tiny_dir, data_file, store, tmp_path, capsys):
    """`run_visualize(VisualizeConfig(...))` is the CLI's job, the shared data and selection
    settings (--ratio, --select-from here) included."""
    from tokenseek.visualize import VisualizeConfig, run_visualize

    settings = ["--ratio", "0.3", "--select-from", "all"]
    assert main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--scores", str(store), "--summary", *settings, "--output", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out.strip().replace(str(tmp_path / "cli"), "OUT")
    cfg = VisualizeConfig(
        model=str(tiny_dir), data=str(data_file), scores=str(store), summary=True, ratio=0.3, select_from="all", output=str(tmp_path / "lib")
    )
    result = run_visualize(cfg)
    cli, lib = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("cli", "lib"))
    assert lib == cli and cli["selection"]["ratio"] == 0.3 and cli["selection"]["select_from"] == "all"
    assert result["mode"] == "summary" and result["message"].replace(str(tmp_path / "lib"), "OUT") == printed


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"index": 0}, "--output is required"),
        ({"output": "o"}, "say what to show"),
        ({"output": "o", "summary": True}, "--summary needs a score store"),
        ({"output": "o", "summary": True, "scores": "s", "grad_layer": 2}, "reads the store's scores as they were made"),
        ({"output": "o", "runs": ["r"], "index": 0}, "--runs plots loss curves only"),
        ({"output": "o", "index": 0, "ratio": 0.0}, "--ratio must be in (0, 1]"),
        ({"output": "o", "index": 0, "grad_mode": "max"}, "unknown --grad-mode"),
    ],
)
def test_visualize_config_refuses_what_it_cannot_show(settings, message):
    from tokenseek.errors import TokenSeekError
    from tokenseek.visualize import VisualizeConfig

    with pytest.raises(TokenSeekError, match=message.replace("(", r"\(").replace("]", r"\]")):
        VisualizeConfig(**settings)


def test_visualize_shares_trains_data_and_selection_settings():
    from tokenseek.cli.common import DATA_OPTIONS, MODEL_OPTIONS, SELECTION_OPTIONS
    from tokenseek.train.config import TrainConfig
    from tokenseek.visualize import VisualizeConfig

    for name in MODEL_OPTIONS + DATA_OPTIONS + SELECTION_OPTIONS:
        assert getattr(VisualizeConfig(output="o", index=0), name) == getattr(TrainConfig(), name), name


def test_summary_selects_from_the_targets_as_training_does(tiny_dir, data_file, store, tmp_path, tokenizer):
    from tokenseek.seeking.select import target_positions

    out = tmp_path / "summary"
    assert main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--scores", str(store), "--summary", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"]["select_from"] == "targets"
    data = _tokenized(tokenizer)
    kept = sum(min(math.ceil(0.1 * len(ex["input_ids"])), int(target_positions(ex["labels"]).sum())) for ex in data.examples)
    for name in ("context", "gradient", "combined"):
        assert summary["share"][name]["kept"] == kept
    assert "positions with a training target only" in (out / "summary.md").read_text()


def test_summary_needs_scores(tiny_dir, data_file, tmp_path, capsys):
    code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--summary", "--output", str(tmp_path / "s")])
    assert code == 2 and "--scores" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("extra", [["--grad-layer", "2"], ["--grad-mode", "signed"], ["--layers"]])
def test_summary_refuses_recomputation_options(tiny_dir, data_file, store, tmp_path, capsys, extra):
    """A summary only reads the store: a layer or reduction asked for would be silently ignored."""
    argv = ["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--scores", str(store), "--summary", *extra]
    assert main([*argv, "--output", str(tmp_path / "s")]) == 2
    assert "drop --layers/--grad-layer/--grad-mode" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- loss curves
def _fake_run(path, losses, summary=None):
    path.mkdir(parents=True)
    (path / "loss_curve.json").write_text(json.dumps([{"step": i + 1, "loss": v} for i, v in enumerate(losses)]))
    if summary is not None:
        (path / "train_summary.json").write_text(json.dumps(summary))
    return path


def test_loss_curves_of_several_runs(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", [2.5, 2.1, 1.8, 1.7], {"selection": "tokenseek", "ratio": 0.1, "peft": "lora"})
    b = _fake_run(tmp_path / "b", [2.6, 2.4, 2.0, 1.9], {"selection": "full", "ratio": 1.0, "peft": "none"})
    c = _fake_run(tmp_path / "plain_run", [2.7, 2.2])
    out = tmp_path / "plots" / "loss.png"
    assert main(["visualize", "--runs", str(a), str(b), str(c), "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "tokenseek 10% lora" in stdout and "full full-param" in stdout and "plain_run" in stdout
    _check_png(out)


def test_run_label_and_duplicates(tmp_path):
    from tokenseek.visualize.runs import load_runs, run_label

    assert run_label({"selection": "random", "ratio": 0.5, "peft": "qlora"}, "x") == "random 50% qlora"
    assert run_label(None, "dirname") == "dirname"
    same = {"selection": "tokenseek", "ratio": 0.1, "peft": "lora"}
    runs = load_runs([_fake_run(tmp_path / "r1", [1.0], same), _fake_run(tmp_path / "r2", [1.0], same)])
    assert [r["label"] for r in runs] == ["tokenseek 10% lora (r1)", "tokenseek 10% lora (r2)"]


# ----------------------------------------------------------------------------- bad input
def test_index_out_of_range(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "deep" / "ex"
    code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--index", "99", "--output", str(out)])
    assert code == 2 and "out of range" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "deep").exists()


def test_scores_from_another_dataset(tiny_dir, data_file, store, tmp_path, capsys):
    out = tmp_path / "ex"
    for extra in (["--index", "0"], ["--summary"]):
        code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--limit", "4", "--scores", str(store), *extra, "--output", str(out)])
        assert code == 2 and "other data" in _error_line(capsys.readouterr().err)
        assert not out.exists()


def test_scores_from_another_model(tiny_dir, data_file, tmp_path, capsys):
    """Same model directory (so same tokenizer and data fingerprint) but weights changed after scoring."""
    import shutil

    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    store = tmp_path / "scores"
    assert main(["score", "--model", str(model_dir), "--data", str(data_file), "--limit", "2", "--out", str(store)]) == 0
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)
    model.save_pretrained(model_dir)
    capsys.readouterr()
    argv = ["visualize", "--model", str(model_dir), "--data", str(data_file), "--limit", "2", "--index", "0", "--scores", str(store), "--output", str(tmp_path / "ex")]
    assert main(argv) == 2 and "another model" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "ex").exists()


def test_grad_layer_other_than_the_stores(tiny_dir, data_file, store, tmp_path, capsys):
    argv = ["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--index", "0", "--scores", str(store), "--grad-layer", "2"]
    assert main([*argv, "--output", str(tmp_path / "ex")]) == 2
    assert "layer N-1" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "ex").exists()


def test_run_dir_without_loss_curve(tmp_path, capsys):
    good = _fake_run(tmp_path / "good", [1.0, 0.5])
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "loss.png"
    code = main(["visualize", "--runs", str(good), str(empty), "--output", str(out)])
    assert code == 2 and "loss_curve.json" in _error_line(capsys.readouterr().err)
    assert not out.exists()
    code = main(["visualize", "--runs", str(good), "--output", str(tmp_path / "loss.txt")])
    assert code == 2 and "image file" in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["--index", "0"], ["--runs", "somewhere"], ["--summary"]])
def test_missing_output(tiny_dir, data_file, argv, capsys):
    code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), *argv])
    assert code == 2 and "--output" in _error_line(capsys.readouterr().err)


def test_no_mode_given(tiny_dir, data_file, tmp_path, capsys):
    code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--output", str(tmp_path / "x")])
    assert code == 2 and "--index" in _error_line(capsys.readouterr().err)


def test_failure_while_rendering_leaves_nothing(tiny_dir, data_file, tmp_path, capsys, monkeypatch):
    from tokenseek.errors import TokenSeekError
    from tokenseek.visualize import plots

    def broken(*args, **kwargs):
        raise TokenSeekError("simulated failure")

    monkeypatch.setattr(plots, "plot_gradient_map", broken)
    fresh = tmp_path / "new" / "ex"
    code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--index", "0", "--output", str(fresh)])
    assert code == 2 and "simulated failure" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "tokens.html").write_text("old")
    code = main(["visualize", "--model", str(tiny_dir), "--data", str(data_file), "--index", "0", "--output", str(existing)])
    assert code == 2
    assert [p.name for p in existing.iterdir()] == ["tokens.html"] and (existing / "tokens.html").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
