"""The ``tokenseek train`` job: data -> selection -> (PEFT) model -> Trainer -> saved run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenseek.ditching.loss import DEFAULT_LOSS_CHUNK
from tokenseek.errors import TokenSeekError
from tokenseek.utils.io import write_json

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    output_dir: str = "runs/demo"
    model: str | None = None  # Hub id, HF dir or .gguf; None = SmolLM2-135M-Instruct
    data: str | None = None  # file or Hub id; None = the built-in demo dataset
    format: str = "auto"  # alpaca, messages, prompt_completion or text; auto = from the columns
    split: str = "train"  # dataset split (a Hub split such as train_sft, or a slice such as train[:100])
    subset: str | None = None  # Hub dataset configuration
    fields: str | None = None  # e.g. "instruction=question,output=answer"
    limit: int | None = None  # use only the first N records
    template: str = "alpaca"
    max_length: int = 512
    train_on_prompt: bool = False
    heldout: float = 0.0  # fraction (<1) or count (>=1) of records held out for eval
    selection: str = "tokenseek"
    ratio: float = 0.1
    alpha: float = 1.0
    beta: float = 1.0
    select_from: str = "targets"  # rank only positions with a training target, or "all" (the paper's rule)
    seeking: str = "offline"  # offline: score once before training (a store); online: inside each step, current weights
    loss_norm: str = "token"  # token: mean over kept targets of the window; example: mean of per-example means
    loss_chunk: int = DEFAULT_LOSS_CHUNK  # LM head + loss on this many positions at a time (0: all at once)
    gradient_checkpointing: bool = False  # recompute the kept pass's layers in backward
    scores: str | None = None  # a `tokenseek score` store; scored strategies need one
    peft: str = "lora"
    dtype: str = "auto"  # auto|bf16|fp16|fp32; run_train records the resolved one (auto = bf16 on a capable GPU, else fp32)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str | None = None  # comma list; default all linear layers
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 1
    grad_accum: int = 16
    lr: float = 4e-4
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 2
    memory_budget: str | None = None  # e.g. "6GiB": pick the largest ratio that fits
    overwrite: bool = False

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def identity(self) -> dict:
        """What makes two runs "the same run" (resume allowed) — not output or bookkeeping.

        Options added after runs were first recorded appear only when they differ from the
        behaviour those runs had (``LEGACY_BEHAVIOUR``), so a run recorded before stays resumable.
        """
        # Bookkeeping, and knobs that trade memory for time without changing the gradients.
        ignore = {"output_dir", "overwrite", "logging_steps", "save_steps", "save_total_limit", "loss_chunk", "gradient_checkpointing"}
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ignore and not (k in LEGACY_BEHAVIOUR and LEGACY_BEHAVIOUR[k] == v)
        }


# What runs recorded before an option existed did; see TrainConfig.identity.
# Format "auto" is what those runs did: Alpaca, the only format that loaded then, is detected first.
LEGACY_BEHAVIOUR = {
    "select_from": "all", "seeking": "offline", "loss_norm": "token", "format": "auto", "split": "train", "subset": None, "dtype": "fp32",
}
SEEKING = ("offline", "online")


def validate(cfg: TrainConfig) -> None:
    from tokenseek.data.formats import check_format
    from tokenseek.models.adapters import PEFT_METHODS
    from tokenseek.models.placement import resolve_dtype
    from tokenseek.seeking.select import SCORED, check_selection

    check_format(cfg.format)
    if cfg.peft not in PEFT_METHODS:
        raise TokenSeekError(f"unknown --peft {cfg.peft!r}: choose one of {', '.join(PEFT_METHODS)}")
    check_selection(cfg.selection, cfg.ratio, cfg.alpha, cfg.beta, cfg.select_from)
    if cfg.scores and cfg.selection not in SCORED:
        raise TokenSeekError(f"--scores is only used by the scored selections ({', '.join(SCORED)}), not {cfg.selection!r}")
    if cfg.seeking not in SEEKING:
        raise TokenSeekError(f"unknown --seeking {cfg.seeking!r}: choose one of {', '.join(SEEKING)}")
    if cfg.seeking == "online":
        if cfg.selection not in ("tokenseek", "context", "gradient", "mixed"):
            raise TokenSeekError(f"--seeking online scores tokens inside the step: use --selection tokenseek, context, gradient or mixed, not {cfg.selection!r}")
        if cfg.scores:
            raise TokenSeekError("--seeking online scores with the current weights and needs no --scores: drop one of them")
    from tokenseek.train.trainer import LOSS_NORMS

    if cfg.loss_norm not in LOSS_NORMS:
        raise TokenSeekError(f"unknown --loss-norm {cfg.loss_norm!r}: choose one of {', '.join(LOSS_NORMS)}")
    if cfg.loss_chunk < 0:
        raise TokenSeekError(f"--loss-chunk must be >= 0 (0 = no chunking), got {cfg.loss_chunk}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise TokenSeekError("--batch-size and --grad-accum must be at least 1")
    if cfg.heldout < 0:
        raise TokenSeekError("--heldout must be a fraction in [0, 1) or a count >= 1")
    resolve_dtype(cfg.dtype)  # an unknown --dtype is a one-line error before anything is loaded


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
            previous = json.loads(marker.read_text())
            if previous != json.loads(json.dumps(cfg.identity())):
                changed = sorted(k for k in set(previous) | set(cfg.identity()) if previous.get(k) != cfg.identity().get(k))
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


def attach_keep(examples: list, cfg: TrainConfig, scores) -> "SelectionTally":
    """Add each example's keep mask (offline selection); returns what the selection trains on."""
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
    return StepOptions(loss_norm=cfg.loss_norm, loss_chunk=cfg.loss_chunk, online=online)


def peak_memory_bytes(device: torch.device | None = None) -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def run_train(cfg: TrainConfig) -> dict:
    from transformers import TrainingArguments, set_seed

    from tokenseek.data import DitchingCollator, load_records, tokenize_records
    from tokenseek.models import apply_peft, load_model
    from tokenseek.models.loading import resolve_model
    from tokenseek.models.placement import dtype_name, resolve_dtype, storage_dtype, trainer_precision
    from tokenseek.seeking.select import SCORED
    from tokenseek.train.trainer import TokenSeekTrainer

    validate(cfg)
    state = _distributed_state()
    # The run records the precision it ran in: "auto" is fp32 on a CPU (what every run
    # before --dtype did, so their identity is unchanged) and bf16 on a capable GPU.
    compute = resolve_dtype(cfg.dtype, state.device)
    cfg.dtype = dtype_name(compute)
    out, resuming = _prepare_output_dir(cfg, state if state.num_processes > 1 else None)
    set_seed(cfg.seed)
    started = time.time()

    resolve_model(cfg.model)  # fail on a bad --model before reading data
    records = load_records(cfg.data, fields=cfg.fields, split=cfg.split, subset=cfg.subset, format=cfg.format, limit=cfg.limit)
    model, tokenizer = load_model(
        cfg.model,
        quantize="nf4" if cfg.peft == "qlora" else None,
        dtype=storage_dtype(compute, cfg.peft),
        device=state.device,
    )
    data = tokenize_records(records, tokenizer, template=cfg.template, max_length=cfg.max_length, train_on_prompt=cfg.train_on_prompt)
    logger.info("data: %s", data.report())
    train_examples, heldout_examples = _split_heldout(data.examples, cfg.heldout, cfg.seed)

    if cfg.memory_budget:
        from tokenseek.bench.planner import ratio_for_budget

        cfg.ratio = ratio_for_budget(cfg, max(len(e["input_ids"]) for e in train_examples))
        logger.info("memory budget %s -> ratio %.3f", cfg.memory_budget, cfg.ratio)

    scores = None
    if cfg.selection in SCORED and cfg.seeking == "offline":
        from tokenseek.seeking.store import ScoreStore, score_dataset

        if cfg.scores:
            scores = ScoreStore.open(cfg.scores, data=data, model=model, model_id=cfg.model)
        else:
            # Under torchrun each rank scores its share of the batches; score_dataset waits for
            # all shards, rank 0 merges, and every rank then opens the one complete store.
            scores = score_dataset(
                model, tokenizer, data, out / "scores", model_id=cfg.model,
                rank=state.process_index, world_size=state.num_processes, progress=state.is_main_process,
            )
    tally = attach_keep(train_examples, cfg, scores) if cfg.seeking == "offline" else None

    out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        write_json(out / "run_config.json", cfg.identity())
        if heldout_examples:
            write_json(out / "heldout.json", [records[e["index"]] for e in heldout_examples])

    model = apply_peft(
        model,
        cfg.peft,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules.split(",") if cfg.target_modules else None,
    )
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = TrainingArguments(
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
        report_to=[],
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        **trainer_precision(compute),  # autocast; fp32 adapters / master weights (tokenseek.models.placement)
        # gloo in a single process crashes; only a torchrun/accelerate launch needs it.
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        disable_tqdm=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # Non-reentrant: works with frozen inputs (PEFT) and keyword arguments; the ditched kept pass supports both.
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
    )
    trainer = TokenSeekTrainer(
        model=model,
        args=args,
        train_dataset=train_examples,
        data_collator=DitchingCollator(tokenizer.pad_token_id),
        step=step_options(cfg),
    )
    checkpoint = _last_checkpoint(out / "checkpoints") if resuming else None
    result = trainer.train(resume_from_checkpoint=checkpoint)

    if trainer.is_world_process_zero():
        model_dir = out / "model"
        trainer.save_model(str(model_dir))
        tokenizer.save_pretrained(str(model_dir))
        curve = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
        write_json(out / "loss_curve.json", curve)
        summary = {
            "model": cfg.model or "SmolLM2-135M-Instruct (default)",
            "data": cfg.data or "builtin",
            "data_format": data.format,
            "selection": cfg.selection,
            "ratio": cfg.ratio,
            "alpha": cfg.alpha,
            "beta": cfg.beta,
            "peft": cfg.peft,
            "dtype": cfg.dtype,
            "processes": state.num_processes,
            "examples": len(train_examples),
            "heldout_examples": len(heldout_examples),
            "truncated_examples": data.truncated,
            "dropped_examples": data.dropped,
            "steps": trainer.state.global_step,
            "seeking": cfg.seeking,
            "select_from": cfg.select_from,
            "loss_norm": cfg.loss_norm,
            # Offline: the selection as chosen before training; online: every visit during training.
            **(tally or trainer.online_tally).summary(),
            **({"online_drift": trainer.online_drift.summary()} if cfg.seeking == "online" else {}),
            "first_loss": curve[0]["loss"] if curve else None,
            "final_loss": curve[-1]["loss"] if curve else None,
            "train_loss": result.training_loss,
            "wall_time_s": round(time.time() - started, 2),
            "peak_memory_bytes": peak_memory_bytes(state.device),
            "peak_memory_kind": "cuda max_memory_allocated" if torch.cuda.is_available() else "process peak RSS",
            "resumed_from": checkpoint,
            "data_fingerprint": data.fingerprint(),
        }
        write_json(out / "train_summary.json", summary)
        _log_selection(tally or trainer.online_tally)
        return summary
    return {}


def _log_selection(tally) -> None:
    s = tally.summary()
    logger.info(
        "trained on %d of %d tokens (%.1f %%); kept targets %d of %d (%.1f %%); %d of %d examples without a kept target",
        s["tokens_kept"], s["tokens_total"], 100 * s["kept_fraction"], s["kept_targets"], s["target_positions"],
        100 * s["kept_target_share"], s["examples_without_kept_target"], s["examples"],
    )
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
