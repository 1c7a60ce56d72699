"""``tokenseek export``: merged weights give the same logits as base + adapter; bad input leaves nothing behind."""

from __future__ import annotations

import shutil

import pytest
import torch

from tokenseek.cli.main import main


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    import json

    folder = tmp_path_factory.mktemp("export")
    data = folder / "data.json"
    data.write_text(json.dumps([{"instruction": f"Add {a} and 3.", "input": "", "output": str(a + 3)} for a in range(8)]))
    run = folder / "run"
    # A large learning rate so the adapter moves the logits visibly (LoRA B starts at zero).
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(run), "--max-steps", "2",
            "--grad-accum", "1", "--max-length", "48", "--selection", "random", "--ratio", "0.5", "--lr", "0.05"]
    assert main(argv) == 0
    return run


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_merged_export_equals_base_plus_adapter(tmp_path, lora_run, tiny_model_dir):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "--out", str(out), "--merge"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    ids = torch.randint(0, 1000, (2, 17), generator=torch.Generator().manual_seed(0))
    merged = _logits(AutoModelForCausalLM.from_pretrained(out), ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_logits = _logits(base, ids)
    with_adapter = _logits(peft.PeftModel.from_pretrained(base, str(lora_run / "model")), ids)
    assert (with_adapter - base_logits).abs().max() > 1e-3  # the adapter is not a no-op
    assert torch.allclose(merged, with_adapter, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(out)("Add 2 and 3.").input_ids


def test_adapter_export(tmp_path, lora_run):
    out = tmp_path / "adapter"
    assert main(["export", str(lora_run), "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()


def test_full_model_export_loads_without_training_files(tmp_path, tiny_model_dir, data_file):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(data_file), "--output-dir", str(run), "--max-steps", "1",
                 "--grad-accum", "1", "--max-length", "48", "--selection", "random", "--peft", "none"]) == 0
    out = tmp_path / "full"
    assert main(["export", str(run), "--out", str(out), "--merge"]) == 0  # nothing to merge: copied
    assert not (out / "training_args.bin").exists()
    ids = torch.arange(12)[None]
    trained = AutoModelForCausalLM.from_pretrained(run / "model")
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(out), ids), _logits(trained, ids))


def _err(capsys):
    return capsys.readouterr().err.strip()


def test_bad_export_input_is_one_line_and_writes_nothing(tmp_path, lora_run, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = _err(capsys)
    assert "holds no trained model" in err and len(err.splitlines()) == 1
    assert not out.exists()

    assert main(["export", str(lora_run), "--out", str(out), "--private"]) == 2
    assert "add --push-to-hub REPO_ID or drop --private" in _err(capsys)
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(lora_run), "--out", str(out)]) == 2
    assert "already exists and is not empty" in _err(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # An adapter whose weights do not fit its base fails while merging: no output directory at all.
    broken = tmp_path / "broken"
    shutil.copytree(lora_run, broken)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(broken / "model" / "adapter_model.safetensors"))
    save_file({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in weights.items()}, str(broken / "model" / "adapter_model.safetensors"))
    target = tmp_path / "merged"
    assert main(["export", str(broken), "--out", str(target), "--merge"]) == 2
    err = _err(capsys)
    assert "does not fit this base model" in err and len(err.splitlines()) == 1
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_export_config_is_checked_where_it_is_built(tmp_path, lora_run, capsys):
    """The library's ExportConfig refuses what the CLI refuses (one declaration of the options),
    and the CLI's positional RUN_DIR and required --out come from the same fields."""
    from tokenseek.errors import TokenSeekError
    from tokenseek.models.export import ExportConfig, export_run

    with pytest.raises(TokenSeekError, match="add --push-to-hub REPO_ID or drop --private"):
        ExportConfig(run_dir=str(lora_run), out=str(tmp_path / "o"), private=True)
    with pytest.raises(TokenSeekError, match="^RUN_DIR is required$"):
        ExportConfig(run_dir=None, out=str(tmp_path / "o"))
    with pytest.raises(TokenSeekError, match="^--out is required$"):
        ExportConfig(run_dir=str(lora_run), out=None)
    done = export_run(ExportConfig(run_dir=str(lora_run), out=str(tmp_path / "adapter")))
    assert done["kind"] == "adapter" and (tmp_path / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(SystemExit):
        main(["export", str(lora_run)])  # argparse: --out is required
    assert "--out" in capsys.readouterr().err
