"""One config surface: TrainConfig owns defaults and help; YAML gives defaults; given flags win."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tokenseek.cli.main import main, parse_args
from tokenseek.cli.train import config_from_args
from tokenseek.errors import TokenSeekError
from tokenseek.train.config import TrainConfig, validate
from tokenseek.train.recipe import training_arguments
from tokenseek.utils.options import default_text, field_of, flag_name, options


def _config(tmp_path, yaml_text: str | None, *argv: str) -> TrainConfig:
    extra = []
    if yaml_text is not None:
        path = tmp_path / "train.yaml"
        path.write_text(yaml_text)
        extra = ["--config", str(path)]
    return config_from_args(parse_args(["train", *extra, *argv]))


def test_help_lists_every_option_with_its_default(capsys, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside "(default: ...)"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    # One entry per option: it starts on a line "  --flag ..." and runs until the next one.
    entries = {re.split(r"[ ,]", e, maxsplit=1)[0]: " ".join(e.split()) for e in re.split(r"\n  (?=--)", text)[1:]}
    for f in options(TrainConfig):
        assert f"(default: {default_text(f)})" in entries[f"--{flag_name(f)}"], (f.name, entries.get(f"--{flag_name(f)}"))
    assert len(options(TrainConfig)) == len(dataclasses.fields(TrainConfig))  # no field is left without a flag


def test_flag_given_at_its_default_beats_yaml(tmp_path):
    # Regression: --peft lora (the default) was overridden by `peft: qlora` in the YAML.
    assert _config(tmp_path, "peft: qlora\n", "--peft", "lora").peft == "lora"
    assert _config(tmp_path, "peft: qlora\n").peft == "qlora"
    assert _config(tmp_path, "grad_accum: 4\n", "--grad-accum", "16").grad_accum == 16
    assert _config(tmp_path, None).peft == "lora"  # the dataclass default


def test_trainingarguments_names_are_accepted(tmp_path):
    # YAML 1.1 reads 2e-4 as a string: it is converted to the field's type.
    cfg = _config(tmp_path, "learning_rate: 2e-4\nper_device_train_batch_size: 2\nlr_scheduler_type: linear\n",
                  "--gradient_accumulation_steps", "3", "--num-train-epochs", "2")
    assert (cfg.lr, cfg.batch_size, cfg.scheduler, cfg.grad_accum, cfg.epochs) == (2e-4, 2, "linear", 3, 2.0)


def test_yaml_lists_for_comma_options(tmp_path):
    cfg = _config(tmp_path, "report_to: [tensorboard]\ntarget_modules: [q_proj, v_proj]\n")
    assert (cfg.report_to, cfg.target_modules) == ("tensorboard", "q_proj,v_proj")


def test_other_trainer_arguments_pass_through(tmp_path):
    cfg = _config(tmp_path, "training_args: {adam_beta2: 0.95, adam_epsilon: 1.0e-6}\nhub_model_id: me/model\n",
                  "--trainer-arg", "adam_beta2=0.9", "--trainer-arg", "dataloader_drop_last=true")
    assert cfg.trainer_args == {"adam_beta2": 0.9, "adam_epsilon": 1e-6, "hub_model_id": "me/model", "dataloader_drop_last": True}
    args = training_arguments(cfg, tmp_path / "run")
    assert (args.adam_beta2, args.adam_epsilon, args.hub_model_id, args.dataloader_drop_last) == (0.9, 1e-6, "me/model", True)


def test_checkpointing_reaches_the_trainer_without_a_deprecated_name(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checkpointing.*deprecated.*")
        args = training_arguments(_config(tmp_path, "", "--gradient-checkpointing"), tmp_path / "run")
        off = training_arguments(_config(tmp_path, ""), tmp_path / "run")
    # The user's own settings win, under the old name too (which is theirs to see warned about).
    own = training_arguments(
        _config(tmp_path, "activation_checkpointing: true\ntraining_args: {gradient_checkpointing_kwargs: {use_reentrant: true}}\n"), tmp_path / "run"
    )
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert off.gradient_checkpointing is False
    assert own.gradient_checkpointing is True and own.gradient_checkpointing_kwargs == {"use_reentrant": True}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trainer-arg", "adam_beta=0.9"], "unknown trainer argument 'adam_beta' (did you mean adam_beta"),
        (["--trainer-arg", "learning_rate=0.1"], "learning_rate is a tokenseek option: set it as --lr"),
        (["--trainer-arg", "remove_unused_columns=true"], "cannot be overridden"),
        (["--trainer-arg", "nonsense"], "--trainer-arg takes KEY=VALUE"),
        (["--trainer-arg", "eval_strategy=weekly"], "the Trainer refused these settings"),
        (["--eval-steps", "2"], "--eval-steps needs held-out data"),
        (["--report-to", "tensorboard,nonexistent"], "--report-to: nonexistent is not supported"),
        (["--peft", "adapterx"], "unknown --peft 'adapterx': choose one of"),
        (["--max-steps", "0"], "--max-steps 0 trains nothing"),
        (["--peft-arg", "use_rslorra=true"], "unknown --peft-arg 'use_rslorra' for --peft lora (did you mean use_rslora?)"),
        (["--peft-arg", "r=4"], "--peft-arg r is a tokenseek option for --peft lora: set it with --lora-r"),
        (["--peft", "loha", "--peft-arg", "module_dropout=0.1"], "set it with --lora-dropout"),
        (["--peft", "none", "--peft-arg", "use_dora=true"], "--peft none trains every parameter"),
        (["--peft-arg", "layers_pattern=layers"], "peft's LoraConfig refused these settings"),
    ],
)
def test_bad_trainer_settings_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), "--selection", "random", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--lora-r", "0"], "--lora-r must be at least 1, got 0"),
        (["train", "--epochs", "0"], "--epochs must be greater than 0, got 0.0"),
        (["train", "--lr", "nan"], "--lr must be greater than 0, got nan"),
        (["train", "--lora-dropout", "1"], "--lora-dropout must be at least 0 and less than 1, got 1.0"),
        (["train", "--save-steps", "0"], "--save-steps must be at least 1"),
        (["train", "--grad-accum", "0"], "--grad-accum must be at least 1"),
        (["train", "--limit", "0"], "--limit must be at least 1"),
        (["score", "--max-length", "1", "--out"], "--max-length must be at least 2, got 1"),
        (["score", "--batch-size", "0", "--out"], "--batch-size must be at least 1, got 0"),
        (["bench", "--lora-r", "0", "--output"], "--lora-r must be at least 1, got 0"),
        (["eval", "--heldout", "x.json", "--exact-match", "--max-new-tokens", "0", "--output"], "--max-new-tokens must be at least 1"),
    ],
)
def test_out_of_range_options_are_refused_before_any_work(tmp_path, capsys, argv, message):
    """Ranges declared once on the config dataclasses; each command refuses before touching model, data or output."""
    out = tmp_path / "out"
    if argv[-1] not in ("--out", "--output"):
        argv = [*argv, "--output-dir"]
    # Were a range not checked first, the missing model would end the command with another message.
    assert main([*argv, str(out), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokenseek: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_yaml_values_meet_the_same_ranges(tmp_path):
    with pytest.raises(TokenSeekError, match="--lora-r must be at least 1, got 0"):
        validate(_config(tmp_path, "lora_r: 0\n"))
    validate(_config(tmp_path, "lora_r: 1\nlora_dropout: 0\nwarmup_ratio: 0\n"))  # the bounds themselves are allowed


def test_every_train_option_is_in_one_help_group(capsys):
    grouped = [name for names in TrainConfig.GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in options(TrainConfig))  # each once, none left out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for title, names in TrainConfig.GROUPS.items():
        section = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
        assert all(f"--{flag_name(field_of(TrainConfig, name))}" in section for name in names), title


def test_version_names_tokenseek_and_its_libraries(capsys):
    import importlib.metadata
    import os

    import torch

    import tokenseek

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"tokenseek {tokenseek.__version__} (") and f"torch {torch.__version__}" in text
    try:  # the package metadata reads the same single source (pyproject: dynamic version)
        installed = importlib.metadata.version("tokenseek")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("tokenseek is not pip-installed here (CI installs it with setup.sh)")
    assert installed == tokenseek.__version__


def test_help_shows_each_range():
    from tokenseek.cli.config import options_table

    table = options_table(TrainConfig)
    assert "adapter dropout; at least 0 and less than 1 |" in table
    assert "| `--loss-chunk` |" in table and "(0: all at once); at least 0 |" in table


def test_comma_list_options_split_and_check_each_item():
    """``bench --ratios 0.5,0.1``: one flag value, typed items, each item within the declared range and choices."""
    from tokenseek.bench.run import DEFAULT_RATIOS, BenchConfig
    from tokenseek.cli.config import from_args

    cfg = from_args(BenchConfig, parse_args(["bench", "--ratios", "0.5, 0.1", "--seq-len", "64,128"]), model=None, lora={}, dtype="fp32")
    assert cfg.ratios == [0.5, 0.1] and cfg.seq_lens == [64, 128] and cfg.pefts == ["lora"]
    assert BenchConfig().ratios == list(DEFAULT_RATIOS)
    with pytest.raises(TokenSeekError, match=r"--ratios must be greater than 0 and at most 1, got 2"):
        BenchConfig(ratios=[0.5, 2])
    with pytest.raises(TokenSeekError, match="unknown --peft 'lora2'"):
        BenchConfig(pefts=["lora", "lora2"])


def test_yaml_errors(tmp_path):
    with pytest.raises(TokenSeekError, match="unknown option.*no_such_option"):
        _config(tmp_path, "no_such_option: 1\n")
    with pytest.raises(TokenSeekError, match="lr must be a number, got 'fast'"):
        _config(tmp_path, "lr: fast\n")
    with pytest.raises(TokenSeekError, match="set twice"):
        _config(tmp_path, "lr: 0.1\nlearning_rate: 0.2\n")


def test_new_options_leave_recorded_identities_alone(monkeypatch):
    """A run recorded before these options existed must stay resumable (a study depends on it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # those runs were on CPUs, where "auto" is fp32
    recorded = {"model", "data", "fields", "limit", "template", "max_length", "train_on_prompt", "heldout", "selection", "ratio",
                "alpha", "beta", "scores", "peft", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "max_steps",
                "batch_size", "grad_accum", "lr", "optim", "max_grad_norm", "scheduler", "warmup_ratio", "weight_decay", "seed",
                "memory_budget"}
    # The identity records the resolved dtype: "auto" is fp32 on a CPU, the precision of every earlier run.
    assert set(TrainConfig(select_from="all").identity()) == recorded
    assert TrainConfig(select_from="all").identity() == TrainConfig(select_from="all", dtype="fp32").identity()
    changed = TrainConfig(select_from="all", load_best_model_at_end=True, eval_steps=5, trainer_args={"adam_beta2": 0.9})
    assert set(changed.identity()) == recorded | {"load_best_model_at_end", "trainer_args"}


def test_experiment_defaults_come_from_trainconfig():
    from tokenseek.experiment.config import train_defaults

    defaults = train_defaults()
    assert defaults["lr"] == TrainConfig().lr and defaults["trainer_args"] == {}


def test_docs_options_table_matches_trainconfig():
    """docs/TRAINING.md holds the generated table; regenerate it with
    python3 -c "from tokenseek.cli.config import options_table; from tokenseek.train.config import TrainConfig; print(options_table(TrainConfig))"
    """
    from pathlib import Path

    from tokenseek.cli.config import options_table

    docs = (Path(__file__).parent.parent / "docs" / "TRAINING.md").read_text()
    assert options_table(TrainConfig) in docs
    assert docs.count("| `--") == len(options(TrainConfig))  # no stale row left beside the table


def test_library_jobs_are_importable_as_the_docs_show():
    """The import lines of docs/TRAINING.md, docs/RESULTS.md, docs/EVAL.md and docs/VISUALIZE.md
    name the classes the commands are built from (not copies)."""
    import tokenseek.experiment.job
    import tokenseek.train.config
    import tokenseek.train.recipe
    from tokenseek.experiment import ExperimentOptions, run_experiments
    from tokenseek.train import TrainConfig as Train
    from tokenseek.train import run_train

    assert Train is tokenseek.train.config.TrainConfig and run_train is tokenseek.train.recipe.run_train
    assert ExperimentOptions is tokenseek.experiment.job.ExperimentOptions and run_experiments is tokenseek.experiment.job.run_experiments
    docs = Path(__file__).parent.parent / "docs"
    assert "from tokenseek.train import TrainConfig, run_train" in (docs / "TRAINING.md").read_text()
    assert "from tokenseek.experiment import ExperimentOptions, run_experiments" in (docs / "RESULTS.md").read_text()


def test_every_entry_point_defaults_to_the_cli_selection():
    """ratio, α, β and select_from default alike in the CLI/YAML, seek(), online seeking, the
    trainers, score stores' keep masks and the views (one place: tokenseek.seeking.select)."""
    import dataclasses
    import inspect

    from tokenseek.seeking.online import OnlineSeeker
    from tokenseek.seeking.seek import seek
    from tokenseek.seeking.select import keep_for_labels
    from tokenseek.seeking.store import score_dataset
    from tokenseek.train.selection import SelectionOptions
    from tokenseek.visualize.example import compute_example
    from tokenseek.visualize.summary import compute_summary

    cli = TrainConfig()
    entry_points = [seek, keep_for_labels, score_dataset, compute_example, compute_summary]
    checked = 0
    for fn in entry_points:
        for name, parameter in inspect.signature(fn).parameters.items():
            if name in ("ratio", "alpha", "beta", "select_from") and parameter.default is not inspect.Parameter.empty:
                assert parameter.default == getattr(cli, name), f"{fn.__qualname__}({name}={parameter.default!r})"
                checked += 1
    for cls in (OnlineSeeker, SelectionOptions):  # the latter: TokenSeekTrainer's and TRL's TokenSeekSFTTrainer's keywords
        for f in dataclasses.fields(cls):
            if f.name in ("ratio", "alpha", "beta", "select_from"):
                assert f.default == getattr(cli, f.name), f"{cls.__name__}.{f.name}"
                checked += 1
    assert checked >= 20


@pytest.mark.parametrize(
    "settings, ignored",
    [
        ({}, set()),
        ({"selection": "tokenseek", "alpha": 3.0, "ratio": 0.2, "lora_r": 4}, set()),  # all read
        ({"selection": "random", "alpha": 3.0, "beta": 0.5, "ratio": 0.2}, {"--alpha", "--beta"}),
        ({"selection": "context", "beta": 2.0}, {"--beta"}),
        ({"selection": "full", "ratio": 0.3, "select_from": "all", "alpha": None}, {"--ratio", "--select-from"}),  # alpha at its default (unset)
        ({"selection": "full", "ratio": 1.0}, set()),  # says the same as full
        ({"memory_budget": "6GiB", "ratio": 0.2}, {"--ratio"}),
        ({"memory_budget": "6GiB"}, set()),
        ({"peft": "none", "lora_r": 4, "target_modules": "q_proj"}, {"--lora-r", "--target-modules"}),
        ({"peft": "ia3", "lora_dropout": 0.1, "target_modules": "q_proj"}, {"--lora-dropout"}),
        ({"peft": "loha", "lora_r": 4, "lora_dropout": 0.1}, set()),
    ],
)
def test_options_a_run_never_reads_are_named(settings, ignored):
    from tokenseek.train.config import ignored_options

    lines = ignored_options(TrainConfig(**settings))
    assert {line.split()[0] for line in lines} == ignored
    assert all("has no effect" in line for line in lines)


def _saved_peft_config(folder, cls_name: str, **fields):
    import peft

    getattr(peft, cls_name)(task_type="CAUSAL_LM", **fields).save_pretrained(folder)
    return folder


def test_peft_config_file_becomes_the_adapter_options(tmp_path):
    """A saved config's method and fields, read back independently of how peft wrote them."""
    from tokenseek.train.config import with_peft_file

    folder = _saved_peft_config(tmp_path / "lora", "LoraConfig", r=4, lora_alpha=32, lora_dropout=0.0, target_modules=["v_proj", "q_proj"], use_rslora=True)
    cfg = with_peft_file(TrainConfig(peft_config=str(folder)))
    assert (cfg.peft, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules) == ("lora", 4, 32, 0.0, "q_proj,v_proj")
    assert cfg.peft_args == {"use_rslora": True} and cfg.peft_config is None  # only fields away from peft's defaults
    # The file itself (not the folder), a LoHa config, and a LoRA config on a 4-bit base.
    loha = _saved_peft_config(tmp_path / "loha", "LoHaConfig", r=2, alpha=4, module_dropout=0.1, rank_dropout=0.2)
    cfg = with_peft_file(TrainConfig(peft_config=str(loha / "adapter_config.json")))
    assert (cfg.peft, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, cfg.peft_args) == ("loha", 2, 4, 0.1, None, {"rank_dropout": 0.2})
    assert with_peft_file(TrainConfig(peft="qlora", peft_config=str(folder))).peft == "qlora"
    ia3 = _saved_peft_config(tmp_path / "ia3", "IA3Config", target_modules=["down_proj", "v_proj"], feedforward_modules=["down_proj"])
    cfg = with_peft_file(TrainConfig(peft_config=str(ia3)))
    assert (cfg.peft, cfg.target_modules, cfg.peft_args) == ("ia3", "down_proj,v_proj", {"feedforward_modules": ["down_proj"]})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lora_r": 16}, "--peft-config sets the adapter: drop --lora-r"),
        ({"peft_args": {"use_dora": True}}, "drop --peft-arg"),
        ({"peft": "loha"}, "--peft loha does not fit --peft-config's lora adapter"),
        ({"peft": "none"}, "--peft none trains every parameter"),
    ],
)
def test_peft_config_file_refuses_competing_options(tmp_path, settings, message):
    folder = _saved_peft_config(tmp_path / "lora", "LoraConfig", r=4)
    with pytest.raises(TokenSeekError, match=message):
        validate(TrainConfig(peft_config=str(folder), selection="random", **settings))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "is not valid JSON"),
        ('{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM"}', "peft_type 'PROMPT_TUNING' is not an adapter tokenseek trains"),
        ('{"peft_type": "LORA", "task_type": "SEQ_CLS"}', "task_type SEQ_CLS is not CAUSAL_LM"),
        ('{"peft_type": "LORA", "target_modules": ".*proj"}', "list the module names instead"),
    ],
)
def test_bad_peft_config_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "adapter_config.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), "--selection", "random", "--peft-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_trainer_selection_keywords_name_what_they_never_read(caplog):
    """TokenSeekTrainer's / TokenSeekSFTTrainer's keywords: the same rules as train's options."""
    from tokenseek.train.selection import SelectionOptions

    assert SelectionOptions(selection="tokenseek", seeking="online", alpha=3.0).ignored_options() == []
    lines = SelectionOptions(selection="random", alpha=3.0, beta=0.5).ignored_options()
    assert lines == ["alpha=3.0 has no effect: random selection fixes its own score weights", "beta=0.5 has no effect: random selection fixes its own score weights"]
    assert "alpha=3.0 has no effect" in caplog.text  # logged when the options are made
    assert sorted(line.split()[0] for line in SelectionOptions(selection="full", ratio=0.5, select_from="all").ignored_options()) == ["ratio=0.5", "select_from='all'"]
    for settings in ({"selection": "random", "scores": "s"}, {"selection": "tokenseek", "seeking": "online", "scores": "s"}):
        with pytest.raises(TokenSeekError, match="scores= is read by offline scored selections only"):
            SelectionOptions(**settings)


def test_a_run_matches_its_record_on_the_settings_its_selection_reads():
    """A first/random run recorded while the default score weights were (1, 1) is the same run
    under today's defaults (it never reads them); a TokenSeek run whose weights changed is not."""
    recorded = json.loads(json.dumps({**TrainConfig(selection="first").identity(), "alpha": 1.0, "beta": 1.0}))
    assert "beta" not in TrainConfig(selection="first").identity()
    assert TrainConfig(selection="first").changes_from(recorded) == []
    assert TrainConfig(selection="first", seed=7).changes_from(recorded) == ["seed"]
    scored = json.loads(json.dumps(TrainConfig(selection="tokenseek", alpha=1.0, beta=1.0).identity()))
    assert TrainConfig(selection="tokenseek").changes_from(scored) == ["beta"]  # the default with targets is (1, 0)
    assert TrainConfig(selection="tokenseek", beta=1.0).changes_from(scored) == []
