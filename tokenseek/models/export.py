"""``tokenseek export``: a training run as a standalone model folder (or its adapter alone).

The output loads with plain transformers (``AutoModelForCausalLM.from_pretrained``) or, for an
adapter, with ``peft.AutoPeftModelForCausalLM``. It is written to a temporary sibling folder and
renamed at the end, so a failure leaves no half-written output.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tokenseek.errors import TokenSeekError, first_line
from tokenseek.utils.io import atomic_dir

logger = logging.getLogger(__name__)


def export_run(run: str | Path, out: str | Path, *, merge: bool = False, push_to_hub: str | None = None, private: bool = False) -> dict:
    """Write ``run``'s model to ``out``; returns what was written (for the CLI's one-line report).

    ``merge=True`` folds an adapter into its base model (loaded in full precision, also for a
    QLoRA run) and saves the merged weights as safetensors with the tokenizer.
    """
    from tokenseek.models.runs import run_model_dir

    if private and not push_to_hub:
        raise TokenSeekError("--private sets the visibility of the Hub repo that --push-to-hub creates: add --push-to-hub REPO_ID or drop --private")
    model_dir, run_dir = run_model_dir(str(run))
    if model_dir is None or not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise TokenSeekError(f"{run} holds no trained model: give a `tokenseek train` output directory (with model/) or its model/ folder")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TokenSeekError(f"--out {out} already exists and is not empty: give a new directory")
    adapter = (model_dir / "adapter_config.json").is_file()
    kind = "merged model" if adapter and merge else "adapter" if adapter else "full model"
    with atomic_dir(out) as tmp:
        if adapter and merge:
            _write_merged(model_dir, run_dir, tmp)
        else:
            _copy_model_files(model_dir, tmp)
    if push_to_hub:
        _push(out, push_to_hub, private)
    return {"out": str(out), "kind": kind, "pushed_to": push_to_hub}


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
