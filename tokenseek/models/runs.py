"""A training run's model: find ``RUN/model/``, its base model, and put an adapter on a base.

A training run writes ``RUN/model/`` (a full HF model, or a PEFT adapter with
``adapter_config.json``) next to ``RUN/run_config.json`` and ``RUN/train_summary.json``.
Used by ``tokenseek eval`` and ``tokenseek export``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenseek.errors import TokenSeekError

logger = logging.getLogger(__name__)

# Config fields that must agree between an adapter's base model and the model it is put on.
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "num_attention_heads", "num_key_value_heads")


def run_model_dir(path: str | None) -> tuple[Path | None, Path | None]:
    """``(model folder, run folder)`` for a training output dir, a model dir or a Hub id (None, None)."""
    if path is None:
        return None, None
    p = Path(path).expanduser()
    if not p.is_dir():
        return None, None
    if (p / "model").is_dir() and not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        return p / "model", p
    parent = p.parent if (p.parent / "run_config.json").is_file() or (p.parent / "train_summary.json").is_file() else None
    return p, parent


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def base_model_of_run(adapter_dir: Path, run_dir: Path | None) -> str | None:
    """The base model an adapter was trained on: the run's --model, else adapter_config's."""
    run = read_json(run_dir / "run_config.json") if run_dir else {}
    if "model" in run:
        return run["model"]  # None means the default model, as in training
    return read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path")


def attach_adapter(lm, adapter_dir: Path, *, merge: bool = True):
    import peft

    _check_same_base(lm, adapter_dir)
    try:
        wrapped = peft.PeftModel.from_pretrained(lm, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatch, missing target modules
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's load_state_dict error starts with a bare header; the first "size mismatch" line says more.
        detail = next((line for line in lines if "size mismatch" in line), lines[0])
        raise TokenSeekError(f"the adapter in {adapter_dir} does not fit this base model ({detail[:160]}): pass the --model it was trained on") from None
    # Merging is exact up to float rounding and makes every forward cheaper; into 4-bit
    # weights it would round the adapter away, so callers pass merge=False for those.
    return wrapped.merge_and_unload() if merge else wrapped


def _check_same_base(lm, adapter_dir: Path) -> None:
    """Refuse an adapter whose recorded base model has a different architecture or shape."""
    from transformers import AutoConfig

    base = read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        return
    try:
        # Local folders and Hub ids already in the cache only: never a download here.
        theirs = AutoConfig.from_pretrained(base, local_files_only=True).to_dict()
    except (OSError, ValueError):
        if Path(base).name != Path(str(lm.config._name_or_path)).name:
            logger.warning("adapter %s was trained on %s, which cannot be checked offline; evaluating on %s", adapter_dir, base, lm.config._name_or_path)
        return
    ours = lm.config.to_dict()
    diffs = [f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in _SHAPE_FIELDS if k in theirs and theirs.get(k) != ours.get(k)]
    if diffs:
        raise TokenSeekError(
            f"the adapter in {adapter_dir} was trained on {base}, a different model ({', '.join(diffs[:3])}): pass that model with --model"
        )
