"""PEFT adapters (paper S1.3: r=8, alpha=16, dropout=0.05), built with the ``peft`` library."""

from __future__ import annotations

from tokenseek.errors import TokenSeekError, first_line

# qlora is LoRA on a 4-bit NF4 base model; the base model is quantised at load time.
PEFT_METHODS = ("none", "lora", "qlora", "loha", "lokr", "ia3")


# The config fields tokenseek's own options set, per method: --peft-arg must not set them twice.
_OWNED_FIELDS = {
    "lora": {"r": "--lora-r", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "target_modules": "--target-modules"},
    "loha": {"r": "--lora-r", "alpha": "--lora-alpha", "module_dropout": "--lora-dropout", "target_modules": "--target-modules"},
    "ia3": {"target_modules": "--target-modules", "feedforward_modules": "--target-modules"},
}
_OWNED_FIELDS["qlora"] = _OWNED_FIELDS["lora"]
_OWNED_FIELDS["lokr"] = _OWNED_FIELDS["loha"]


def _config_class(method: str):
    import peft

    return {"lora": peft.LoraConfig, "qlora": peft.LoraConfig, "loha": peft.LoHaConfig, "lokr": peft.LoKrConfig, "ia3": peft.IA3Config}[method]


def peft_config(method: str, *, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=None, extra: dict | None = None):
    """A ``peft`` config for ``method`` or ``None`` for full-parameter training.

    ``target_modules`` defaults to every linear layer except the LM head
    ("all-linear"), which works for any architecture, tiny test models included.
    ``extra``: any other fields of the method's config class (``--peft-arg``), e.g.
    ``{"use_rslora": True}``; see :func:`check_peft_args`.
    """
    import peft

    if method not in PEFT_METHODS:
        raise TokenSeekError(f"unknown --peft {method!r}: choose one of {', '.join(PEFT_METHODS)}")
    check_peft_args(method, extra or {})
    if method == "none":
        return None
    targets = target_modules or "all-linear"
    kwargs: dict = {"task_type": peft.TaskType.CAUSAL_LM}
    if method in ("lora", "qlora"):
        kwargs.update(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    elif method in ("loha", "lokr"):
        kwargs.update(r=r, alpha=alpha, module_dropout=dropout, target_modules=targets)
    elif target_modules is not None:
        # IA3 rescales activations; its feed-forward modules are found by peft for known
        # architectures, else every linear layer's output is scaled.
        kwargs.update(target_modules=targets, feedforward_modules=[])
    try:
        return _config_class(method)(**kwargs, **(extra or {}))
    except (TypeError, ValueError) as exc:
        raise TokenSeekError(f"--peft-arg: peft's {_config_class(method).__name__} refused these settings: {first_line(exc)}") from None


def check_peft_args(method: str, extra: dict) -> None:
    """``--peft-arg`` keys must be fields of the method's peft config that no tokenseek option sets."""
    import dataclasses
    import difflib

    if not extra:
        return
    if method == "none":
        raise TokenSeekError("--peft-arg configures an adapter, but --peft none trains every parameter: choose --peft lora (or another method) or drop --peft-arg")
    cls = _config_class(method)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in extra:
        if key == "task_type":
            raise TokenSeekError("--peft-arg task_type is set by tokenseek (CAUSAL_LM): drop it")
        if key in _OWNED_FIELDS[method]:
            raise TokenSeekError(f"--peft-arg {key} is a tokenseek option for --peft {method}: set it with {_OWNED_FIELDS[method][key]}")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TokenSeekError(f"unknown --peft-arg {key!r} for --peft {method}{hint}: give a field of peft's {cls.__name__}")


def adapter_kwargs(settings) -> dict:
    """``apply_peft`` / ``peft_config`` keyword arguments from anything that carries the adapter
    options ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` (comma-separated)
    and ``peft_args`` (a dict): a TrainConfig, or the parsed flags of a command that borrows them."""
    kwargs = {"r": settings.lora_r, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout}
    if settings.target_modules:
        kwargs["target_modules"] = [name.strip() for name in settings.target_modules.split(",") if name.strip()]
    if getattr(settings, "peft_args", None):
        kwargs["extra"] = dict(settings.peft_args)
    return kwargs


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
            fallback = peft_config("ia3", target_modules="all-linear", extra=kwargs.get("extra"))
            return peft.get_peft_model(model, fallback)
        raise TokenSeekError(f"could not add {method} adapters to this model: {exc}") from None
