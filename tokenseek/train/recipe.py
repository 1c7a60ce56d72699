"""The ``tokenseek train`` job: data -> selection -> (PEFT) model -> Trainer -> saved run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from tokenseek.errors import TokenSeekError, first_line
from tokenseek.train.config import TrainConfig, ignored_options, trainer_arg_names, validate, with_peft_file
from tokenseek.utils.io import write_json

logger = logging.getLogger(__name__)


def training_arguments(cfg: TrainConfig, out: Path):
    """The Trainer's settings: tokenseek's options, then the ``trainer_args`` pass-through (which wins)."""
    from transformers import TrainingArguments

    from tokenseek.models.placement import resolve_dtype, trainer_precision

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio if cfg.warmup_ratio < 1 else int(cfg.warmup_ratio),
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=cfg.report_to if cfg.report_to in ("none", "all") else [t.strip() for t in cfg.report_to.split(",") if t.strip()],
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        # gloo in a single process crashes; only a torchrun/accelerate launch needs it.
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        disable_tqdm=False,
        **trainer_precision(resolve_dtype(cfg.dtype)),  # autocast; fp32 adapters / master weights (tokenseek.models.placement)
    )
    # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    prefix = "activation" if "activation_checkpointing" in trainer_arg_names() else "gradient"
    kwargs[f"{prefix}_checkpointing"] = cfg.gradient_checkpointing
    # Non-reentrant: works with frozen inputs (PEFT) and keyword arguments; the ditched kept pass supports both.
    kwargs[f"{prefix}_checkpointing_kwargs"] = {"use_reentrant": False} if cfg.gradient_checkpointing else None
    if cfg.eval_steps:
        # Trainer.evaluate reports eval_loss; load_best_model_at_end then keeps the lowest one.
        kwargs.update(eval_strategy="steps", eval_steps=cfg.eval_steps, load_best_model_at_end=cfg.load_best_model_at_end)
    if {"gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"} & cfg.trainer_args.keys():
        del kwargs[f"{prefix}_checkpointing_kwargs"]  # the user's own, under either name, wins
    kwargs.update(cfg.trainer_args)
    try:
        args = TrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as exc:
        raise TokenSeekError(f"the Trainer refused these settings: {first_line(exc)}") from None
    _check_trackers(args.report_to)
    return args


# Trackers whose Python package is named differently from the report_to name.
_TRACKER_PACKAGES = {"azure_ml": "azureml", "flyte": "flytekit", "tensorboard": "tensorboard"}


def _check_trackers(report_to: list[str]) -> None:
    """Unknown or uninstalled trackers fail now, not after scoring when the Trainer starts."""
    import importlib.util

    from transformers.integrations import get_reporting_integration_callbacks

    try:
        get_reporting_integration_callbacks(report_to)
    except ValueError as exc:
        raise TokenSeekError(f"--report-to: {first_line(exc)}") from None
    for name in report_to:
        package = _TRACKER_PACKAGES.get(name, name)
        if importlib.util.find_spec(package) is None:
            raise TokenSeekError(f"--report-to {name} needs the {package} package: pip install {package}, or leave it out of --report-to")


def _prepare_output_dir(cfg: TrainConfig, state=None) -> tuple[Path, bool]:
    """Refuse a directory holding another run; return (path, resuming).

    Under torchrun every process checks (so all raise the same error and none waits
    forever at a barrier), then only the main process clears an ``--overwrite`` directory.
    """
    out = Path(cfg.output_dir)
    marker = out / "run_config.json"
    if out.exists() and any(out.iterdir()):
        if cfg.overwrite:
            if state is not None:
                state.wait_for_everyone()  # every rank has looked before rank 0 deletes
            if state is None or state.is_main_process:
                shutil.rmtree(out)
            if state is not None:
                state.wait_for_everyone()
        elif not marker.is_file():
            raise TokenSeekError(f"--output-dir {out} is not empty and holds no tokenseek run: choose another directory or pass --overwrite")
        else:
            changed = cfg.changes_from(json.loads(marker.read_text()))
            if changed:
                raise TokenSeekError(
                    f"--output-dir {out} holds a different run (differs in {', '.join(changed)}): "
                    "use another directory, or --overwrite to replace it"
                )
            return out, True
    return out, False


def _split_heldout(examples: list, heldout: float, seed: int) -> tuple[list, list]:
    if heldout <= 0:
        return examples, []
    count = int(heldout) if heldout >= 1 else int(round(heldout * len(examples)))
    if count >= len(examples):
        raise TokenSeekError(f"--heldout {heldout} leaves no training examples out of {len(examples)}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def attach_keep(examples: list, cfg: TrainConfig, scores):
    """Add each example's keep mask (offline selection); returns the SelectionTally of what it trains on."""
    from tokenseek.seeking.select import SelectionTally, keep_for_labels

    tally = SelectionTally()
    for ex in examples:
        keep = keep_for_labels(
            ex["labels"],
            cfg.ratio,
            cfg.selection,
            select_from=cfg.select_from,
            stored=scores.get(ex["index"]) if scores is not None else None,
            alpha=cfg.alpha,
            beta=cfg.beta,
            seed=cfg.seed,
            index=ex["index"],
        )
        ex["keep"] = keep.tolist()
        tally.add(keep, ex["labels"])
    return tally


def step_options(cfg: TrainConfig):
    """How the trainer runs each step for this config."""
    from tokenseek.seeking.online import OnlineSeeker
    from tokenseek.train.trainer import StepOptions

    online = None
    if cfg.seeking == "online":
        online = OnlineSeeker(
            ratio=cfg.ratio, strategy=cfg.selection, alpha=cfg.alpha, beta=cfg.beta, select_from=cfg.select_from, seed=cfg.seed
        )
    return StepOptions(loss_norm=cfg.loss_norm, loss_chunk=cfg.loss_chunk, context_chunk=cfg.context_chunk, online=online)


def peak_memory_bytes(device: torch.device | None = None) -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def run_train(cfg: TrainConfig) -> dict:
    from transformers import set_seed

    from tokenseek.data import records_from
    from tokenseek.models import load_model
    from tokenseek.models.loading import resolve_model
    from tokenseek.models.placement import dtype_name, resolve_dtype, storage_dtype

    cfg = with_peft_file(cfg)
    validate(cfg)
    for line in ignored_options(cfg):
        logger.warning(line)
    state = _distributed_state()
    # The run records the precision it ran in: "auto" is fp32 on a CPU (what every run
    # before --dtype did, so their identity is unchanged) and bf16 on a capable GPU.
    compute = resolve_dtype(cfg.dtype, state.device)
    cfg = _with_score_weights(dataclasses.replace(cfg, dtype=dtype_name(compute)))
    out, resuming = _prepare_output_dir(cfg, state if state.num_processes > 1 else None)
    # Recorded before --memory-budget resolves the ratio, so a rerun of the same command matches it.
    identity = cfg.identity()
    args = training_arguments(cfg, out)  # refuses bad trainer settings before any data is read
    set_seed(cfg.seed)
    started = time.time()

    resolve_model(cfg.model)  # fail on a bad --model before reading data
    records = records_from(cfg)
    model, tokenizer = load_model(
        cfg.model, quantize="nf4" if cfg.peft == "qlora" else None, dtype=storage_dtype(compute, cfg.peft), device=state.device
    )
    data, train_examples, heldout_examples, eval_examples = _setup_data(cfg, records, tokenizer)

    if cfg.memory_budget:
        cfg = dataclasses.replace(cfg, ratio=_budget_ratio(cfg, out, train_examples, resuming))
    scoring_started = time.time()
    tally = attach_keep(train_examples, cfg, _scores(cfg, model, tokenizer, data, out, state)) if cfg.seeking == "offline" else None
    scoring_s = time.time() - scoring_started  # scoring into OUTPUT_DIR/scores, or reading --scores
    out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        _write_run_files(out, cfg, identity, [records[e["index"]] for e in heldout_examples])

    trainer = _setup_trainer(cfg, model, tokenizer, args, train_examples, eval_examples)
    checkpoint = _last_checkpoint(out / "checkpoints") if resuming else None
    result = trainer.train(resume_from_checkpoint=checkpoint)

    if not trainer.is_world_process_zero():
        return {}
    curve, evals = _save_outputs(out, trainer, tokenizer)
    selected = tally or trainer.online_tally  # offline: as chosen before training; online: every visit
    summary = {
        **_summary(cfg, trainer, curve, evals),
        "data_format": data.format,
        "processes": state.num_processes,
        "examples": len(train_examples),
        "heldout_examples": len(heldout_examples),
        "eval_examples": len(eval_examples),
        "truncated_examples": data.truncated,
        "dropped_examples": data.dropped,
        **selected.summary(),
        **({"online_drift": trainer.online_drift.summary()} if cfg.seeking == "online" else {}),
        "train_loss": result.training_loss,
        "wall_time_s": round(time.time() - started, 2),
        "scoring_wall_time_s": round(scoring_s, 2) if cfg.seeking == "offline" else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", float("nan")), 2),
        "peak_memory_bytes": peak_memory_bytes(state.device),
        "peak_memory_kind": "cuda max_memory_allocated" if torch.cuda.is_available() else "process peak RSS",
        "resumed_from": checkpoint,
        "data_fingerprint": data.fingerprint(),
    }
    write_json(out / "train_summary.json", summary)
    _log_selection(selected)
    return summary


def _with_score_weights(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the α,β it selects with; an unset one takes the default for its --select-from,
    which the log names, since that default changes with --select-from."""
    from tokenseek.seeking.select import score_weights

    alpha, beta = score_weights(cfg.select_from, cfg.alpha, cfg.beta)
    unset = " and ".join(f"--{name}" for name in ("alpha", "beta") if getattr(cfg, name) is None)
    if cfg.selection in ("tokenseek", "mixed", "probe"):
        logger.info("score weights α,β = %g,%g%s", alpha, beta, f" ({unset}: the default with --select-from {cfg.select_from})" if unset else "")
    return dataclasses.replace(cfg, alpha=alpha, beta=beta)


def _setup_data(cfg: TrainConfig, records: list[dict], tokenizer):
    """Tokenized data, split into training, held-out and (with --eval-steps) evaluation examples."""
    from tokenseek.data import tokenize_with

    data = tokenize_with(records, tokenizer, cfg)
    logger.info("data: %s", data.report())
    train_examples, heldout_examples = _split_heldout(data.examples, cfg.heldout, cfg.seed)
    eval_examples = _eval_examples(cfg, heldout_examples, tokenizer) if cfg.eval_steps else []
    return data, train_examples, heldout_examples, eval_examples


def _write_run_files(out: Path, cfg: TrainConfig, identity: dict, heldout_records: list[dict]) -> None:
    """What a resumed run and `tokenseek eval` read back: the run's identity, the resolved
    --memory-budget ratio and the held-out records."""
    write_json(out / "run_config.json", identity)
    if cfg.memory_budget:
        write_json(out / "memory_budget.json", {"memory_budget": cfg.memory_budget, "ratio": cfg.ratio})
    if heldout_records:
        write_json(out / "heldout.json", heldout_records)


def _setup_trainer(cfg: TrainConfig, model, tokenizer, args, train_examples: list, eval_examples: list):
    """The PEFT-wrapped model in a TokenSeekTrainer with the ditching collator and step options."""
    from tokenseek.data import DitchingCollator
    from tokenseek.models import apply_peft
    from tokenseek.models.adapters import adapter_kwargs
    from tokenseek.train.trainer import TokenSeekTrainer

    model = apply_peft(model, cfg.peft, **adapter_kwargs(cfg))
    return TokenSeekTrainer(
        model=model,
        args=args,
        train_dataset=train_examples,
        # No keep mask on evaluation examples: the collator keeps every token (full-token loss).
        eval_dataset=eval_examples or None,
        data_collator=DitchingCollator(tokenizer.pad_token_id),
        step=step_options(cfg),
    )


def _save_outputs(out: Path, trainer, tokenizer) -> tuple[list, list]:
    """The final model (or adapter) with its tokenizer, the loss curve and the evaluation curve."""
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    history = trainer.state.log_history
    curve = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    write_json(out / "loss_curve.json", curve)
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    if evals:
        write_json(out / "eval_curve.json", evals)
    return curve, evals


def _summary(cfg: TrainConfig, trainer, curve: list, evals: list) -> dict:
    return {
        "model": cfg.model or "SmolLM2-135M-Instruct (default)",
        "data": cfg.data or "builtin",
        "selection": cfg.selection,
        "ratio": cfg.ratio,
        "alpha": cfg.alpha,
        "beta": cfg.beta,
        "peft": cfg.peft,
        "dtype": cfg.dtype,
        "seeking": cfg.seeking,
        "select_from": cfg.select_from,
        "loss_norm": cfg.loss_norm,
        "steps": trainer.state.global_step,
        "first_loss": curve[0]["loss"] if curve else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
    }


def _scores(cfg: TrainConfig, model, tokenizer, data, out: Path, state):
    """The score store the scored selections read (made under the run dir unless --scores), else None.

    The run's own store holds what its selection reads: no gradient scores (and no partial
    backward) when the weights leave the gradient score out, as the default α,β = 1,0 does.
    """
    from tokenseek.seeking.select import NOTHING_TO_RANK, SCORED, reads_gradient, scores_needed
    from tokenseek.seeking.store import ScoreStore, score_dataset

    if cfg.selection not in SCORED:
        return None
    gradient = reads_gradient(cfg.selection, cfg.alpha, cfg.beta)
    if cfg.scores:  # opened (and checked against this model and data) even if nothing needs ranking
        store = ScoreStore.open(cfg.scores, data=data, model=model, model_id=cfg.model)
    elif not scores_needed((ex["labels"] for ex in data.examples), cfg.ratio, cfg.selection, cfg.select_from):
        logger.info(NOTHING_TO_RANK)
        return None
    else:
        # Under torchrun each rank scores its share of the batches; score_dataset waits for
        # all shards, rank 0 merges, and every rank then opens the one complete store.
        store = score_dataset(
            model, tokenizer, data, out / "scores", model_id=cfg.model, with_gradient=gradient,
            rank=state.process_index, world_size=state.num_processes, progress=state.is_main_process,
        )
    if gradient:
        store.require_gradient(f"--selection {cfg.selection} with --alpha {cfg.alpha:g} --beta {cfg.beta:g}")
    return store


def _budget_ratio(cfg: TrainConfig, out: Path, train_examples: list, resuming: bool) -> float:
    """The ratio --memory-budget allows; a resumed run reuses the one it started with (same keep masks)."""
    from tokenseek.bench.planner import ratio_for_budget

    plan_file = out / "memory_budget.json"
    if resuming and plan_file.is_file():
        ratio = json.loads(plan_file.read_text())["ratio"]
    else:
        ratio = ratio_for_budget(cfg, max(len(e["input_ids"]) for e in train_examples))
    logger.info("memory budget %s -> ratio %.3f", cfg.memory_budget, ratio)
    return ratio


def _eval_examples(cfg: TrainConfig, heldout_examples: list, tokenizer) -> list:
    """What --eval-steps evaluates: the held-out records, a data file, or a split of the --data dataset."""
    from tokenseek.data import load_records, tokenize_with

    if cfg.eval_split in (None, "heldout"):
        return heldout_examples
    if Path(cfg.eval_split).is_file():
        records = load_records(cfg.eval_split, fields=cfg.fields, format=cfg.format)
    elif cfg.data and not Path(cfg.data).exists():
        records = load_records(cfg.data, fields=cfg.fields, split=cfg.eval_split, subset=cfg.subset, format=cfg.format)
    else:
        raise TokenSeekError(
            f"--eval-split {cfg.eval_split} is not a file, and splits exist only for a Hub --data: give a data file, "
            "heldout, or a split name with a Hub dataset"
        )
    data = tokenize_with(records, tokenizer, cfg)
    return data.examples


def _log_selection(tally) -> None:
    s = tally.summary()
    logger.info(
        "trained on %d of %d tokens (%.1f %%); kept targets %d of %d (%.1f %%); %d of %d examples without a kept target",
        s["tokens_kept"], s["tokens_total"], 100 * s["kept_fraction"], s["kept_targets"], s["target_positions"],
        100 * s["kept_target_share"], s["examples_without_kept_target"], s["examples"],
    )
    if s["kept_target_answer_position"] is not None:
        logger.info("kept targets sit at %.2f of their answers on average (0 = first answer token, 1 = last; all: 0.50)", s["kept_target_answer_position"])
    if tally.warning():
        logger.warning(tally.warning())


def _distributed_state():
    """accelerate's process state, set up before anything is loaded or scored.

    torchrun / ``accelerate launch`` start one process per device; the Trainer would set
    up the same state later, but scoring inside ``train`` needs ranks and a barrier first.
    gloo in a single process crashes, so it is chosen only when ``WORLD_SIZE > 1``.
    """
    from accelerate import PartialState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not torch.cuda.is_available() and distributed:
        return PartialState(cpu=True, backend="gloo")
    return PartialState(cpu=not torch.cuda.is_available())


def _last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* checkpoint; newer half-written ones (a kill mid-save) are removed.

    The Trainer writes trainer_state.json last, so a checkpoint whose state file parses
    has its weights, optimizer, scheduler and RNG state too.
    """
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in candidates:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("removing incomplete checkpoint %s", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)
            continue
        return str(checkpoint)
    return None
