"""Load what ``tokenseek eval`` is asked to evaluate: a base model, a fine-tuned model
directory, a training run's output directory, or a base model plus a PEFT adapter.

A training run writes ``RUN/model/`` (a full HF model, or a PEFT adapter with
``adapter_config.json``) next to ``RUN/run_config.json`` and ``RUN/train_summary.json``.
"""

from __future__ import annotations

from pathlib import Path

from tokenseek.errors import TokenSeekError


def load_for_eval(model: str | None = None, adapter: str | None = None, quantize: str | None = None, dtype: str = "fp32"):
    """Return ``(model, tokenizer, info)``; ``info`` says what was loaded, for the results file."""
    from tokenseek.models.loading import disable_bnb_inference_repacking, load_model
    from tokenseek.models.runs import attach_adapter, base_model_of_run, run_model_dir

    model_dir, run_dir = run_model_dir(model)
    if adapter is None and model_dir is not None and (model_dir / "adapter_config.json").is_file():
        # --model RUN (or RUN/model) holding an adapter: its base is the run's --model.
        adapter, model = str(model_dir), base_model_of_run(model_dir, run_dir)
    elif model_dir is not None:
        model = str(model_dir)

    adapter_dir = None
    if adapter is not None:
        adapter_dir, adapter_run = run_model_dir(adapter)
        if adapter_dir is None or not (adapter_dir / "adapter_config.json").is_file():
            raise TokenSeekError(f"--adapter {adapter} holds no adapter_config.json: give a PEFT adapter folder or a training run's output folder")
        run_dir = run_dir or adapter_run
        if quantize is None and _trained_with_qlora(adapter_dir, adapter_run):
            quantize = "nf4"  # a QLoRA adapter was trained on an NF4 base: evaluate it on the same

    from tokenseek.models.placement import dtype_name, resolve_dtype

    compute = resolve_dtype(dtype)
    lm, tokenizer = load_model(model, quantize=quantize, dtype=compute)
    info = {
        "model": model or "SmolLM2-135M-Instruct (default)",
        "adapter": str(adapter_dir) if adapter_dir else None,
        "quantize": quantize,
        "dtype": dtype_name(compute),
    }
    if adapter_dir is not None:
        lm = attach_adapter(lm, adapter_dir, merge=quantize is None)
    disable_bnb_inference_repacking(lm)  # lm-eval's no-grad forwards must not repack NF4 weights
    lm.eval()
    return lm, tokenizer, info


def _trained_with_qlora(adapter_dir: Path, run_dir: Path | None) -> bool:
    from tokenseek.models.runs import read_json

    for folder in filter(None, (run_dir, adapter_dir)):
        for name in ("train_summary.json", "run_config.json"):
            if read_json(folder / name).get("peft") == "qlora":
                return True
    return False
