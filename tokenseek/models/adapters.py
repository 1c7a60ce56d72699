"""PEFT adapters (paper S1.3: r=8, alpha=16, dropout=0.05), built with the ``peft`` library."""

from __future__ import annotations

from tokenseek.errors import TokenSeekError

# qlora is LoRA on a 4-bit NF4 base model; the base model is quantised at load time.
PEFT_METHODS = ("none", "lora", "qlora", "loha", "lokr", "ia3")


def peft_config(method: str, *, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=None):
    """A ``peft`` config for ``method`` or ``None`` for full-parameter training.

    ``target_modules`` defaults to every linear layer except the LM head
    ("all-linear"), which works for any architecture, tiny test models included.
    """
    import peft

    if method not in PEFT_METHODS:
        raise TokenSeekError(f"unknown --peft {method!r}: choose one of {', '.join(PEFT_METHODS)}")
    if method == "none":
        return None
    targets = target_modules or "all-linear"
    task = peft.TaskType.CAUSAL_LM
    if method in ("lora", "qlora"):
        return peft.LoraConfig(task_type=task, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    if method == "loha":
        return peft.LoHaConfig(task_type=task, r=r, alpha=alpha, module_dropout=dropout, target_modules=targets)
    if method == "lokr":
        return peft.LoKrConfig(task_type=task, r=r, alpha=alpha, module_dropout=dropout, target_modules=targets)
    # IA3 rescales activations; its feed-forward modules are found by peft for known
    # architectures, else we scale every linear layer's output.
    if target_modules is None:
        return peft.IA3Config(task_type=task)
    return peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=[])


def apply_peft(model, method: str, **kwargs):
    """Wrap ``model`` with the adapter for ``method`` (returns it unchanged for 'none')."""
    import peft

    config = peft_config(method, **kwargs)
    if config is None:
        return model
    if method == "qlora":
        # Casts norms to fp32 and enables input grads, as QLoRA training expects;
        # gradient checkpointing stays off because ditching already saves activations.
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        if method == "ia3" and kwargs.get("target_modules") is None:
            fallback = peft.IA3Config(task_type=peft.TaskType.CAUSAL_LM, target_modules="all-linear", feedforward_modules=[])
            return peft.get_peft_model(model, fallback)
        raise TokenSeekError(f"could not add {method} adapters to this model: {exc}") from None
