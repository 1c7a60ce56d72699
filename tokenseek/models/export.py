"""``tokenseek export``: a training run as a standalone model folder (or its adapter alone).

The output loads with plain transformers (``AutoModelForCausalLM.from_pretrained``) or, for an
adapter, with ``peft.AutoPeftModelForCausalLM``. It is written to a temporary sibling folder and
renamed at the end, so a failure leaves no half-written output.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenseek.errors import TokenSeekError, first_line
from tokenseek.utils.io import atomic_dir
from tokenseek.utils.options import check_options, option

logger = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    """What ``tokenseek export`` writes (the CLI's arguments are these fields)."""

    run_dir: str = option(None, "a `tokenseek train` output directory, or its model/ folder", positional=True, metavar="RUN_DIR")
    out: str = option(None, "new output directory (must not exist or be empty)", required=True)
    merge: bool = option(False, "merge the adapter into the base model (safetensors + tokenizer) instead of exporting the adapter alone")
    push_to_hub: str | None = option(None, "also upload the exported folder to this Hub repo (needs network and `hf auth login`)", metavar="REPO_ID")
    private: bool = option(False, "with --push-to-hub: create the repo private")

    def __post_init__(self) -> None:
        check_options(self)
        if self.private and not self.push_to_hub:
            raise TokenSeekError("--private sets the visibility of the Hub repo that --push-to-hub creates: add --push-to-hub REPO_ID or drop --private")


def export_run(cfg: ExportConfig) -> dict:
    """Write the run's model to ``cfg.out``; returns what was written (for the CLI's one-line report).

    ``merge`` folds an adapter into its base model (loaded in full precision, also for a
    QLoRA run) and saves the merged weights as safetensors with the tokenizer.
    """
    from tokenseek.models.runs import run_model_dir

    model_dir, run_dir = run_model_dir(str(cfg.run_dir))
    if model_dir is None or not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise TokenSeekError(f"{cfg.run_dir} holds no trained model: give a `tokenseek train` output directory (with model/) or its model/ folder")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TokenSeekError(f"--out {out} already exists and is not empty: give a new directory")
    adapter = (model_dir / "adapter_config.json").is_file()
    kind = "merged model" if adapter and cfg.merge else "adapter" if adapter else "full model"
    with atomic_dir(out) as tmp:
        if adapter and cfg.merge:
            _write_merged(model_dir, run_dir, tmp)
        else:
            _copy_model_files(model_dir, tmp)
    if cfg.push_to_hub:
        _push(out, cfg.push_to_hub, cfg.private)
    return {"out": str(out), "kind": kind, "pushed_to": cfg.push_to_hub}


def _write_merged(adapter_dir: Path, run_dir: Path | None, target: Path) -> None:
    from transformers import AutoTokenizer

    from tokenseek.models.loading import load_model
    from tokenseek.models.runs import attach_adapter, base_model_of_run

    base, _ = load_model(base_model_of_run(adapter_dir, run_dir), device="cpu")
    merged = attach_adapter(base, adapter_dir, merge=True)
    merged.save_pretrained(target)  # safetensors: transformers' default format
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)  # the run saved its tokenizer with the adapter


# Written by Trainer.save_model next to the weights; a pickle of the run's settings, not part of a model.
_NOT_EXPORTED = {"training_args.bin"}


def _copy_model_files(model_dir: Path, target: Path) -> None:
    for item in model_dir.iterdir():
        if item.is_file() and item.name not in _NOT_EXPORTED:
            shutil.copy2(item, target / item.name)


def _push(folder: Path, repo_id: str, private: bool) -> None:
    """Upload the exported folder to the Hub (needs network and a login; not tested offline)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as exc:  # network, auth, permissions: all reported the same way
        raise TokenSeekError(
            f"exported to {folder}, but pushing to {repo_id} failed ({first_line(exc)}): once online and logged in "
            f"(`hf auth login`), upload it with `hf upload {repo_id} {folder}`"
        ) from None
