"""PEFT adapters (paper S1.3: r=8, alpha=16, dropout=0.05), built with the ``peft`` library."""

from __future__ import annotations

from tokenseek.errors import TokenSeekError, first_line

# qlora is LoRA on a 4-bit NF4 base model; the base model is quantised at load time.
PEFT_METHODS = ("none", "lora", "qlora", "loha", "lokr", "ia3")


# TrainConfig's adapter options, which every command that builds adapters shares (and
# --peft-config replaces).
ADAPTER_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "peft_args")
# The peft config field that each of tokenseek's adapter options sets, per method:
# --peft-arg must not set them twice, and --peft-config's values for them become those options.
OPTION_FIELDS = {
    "lora": {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "target_modules": "target_modules"},
    "loha": {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "module_dropout", "target_modules": "target_modules"},
    "ia3": {"target_modules": "target_modules"},
}
OPTION_FIELDS["qlora"] = OPTION_FIELDS["lora"]
OPTION_FIELDS["lokr"] = OPTION_FIELDS["loha"]
# peft_type in a saved adapter_config.json -> --peft method.
_FILE_METHODS = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr", "IA3": "ia3"}
# Saved fields that describe where an adapter came from, not how to build a new one.
_PROVENANCE_FIELDS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version"}


def _option_setting(method: str, field: str) -> str | None:
    """The tokenseek option that sets ``field`` of the method's peft config, if one does."""
    return next((option for option, owned in OPTION_FIELDS[method].items() if owned == field), None)


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
        # architectures, else every linear layer's output is scaled (unless --peft-arg says which
        # scale their input).
        kwargs.update(target_modules=targets, feedforward_modules=[])
    try:
        return _config_class(method)(**{**kwargs, **(extra or {})})
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
        owner = _option_setting(method, key)
        if owner:
            raise TokenSeekError(f"--peft-arg {key} is a tokenseek option for --peft {method}: set it with --{owner.replace('_', '-')}")
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


def read_peft_config(path) -> tuple[str, dict, dict]:
    """A saved PEFT config (``adapter_config.json``, or a folder holding one) as tokenseek
    settings: ``(method, {adapter option: value}, {other field: value})``. The fields that
    tokenseek's options set (``OPTION_FIELDS``) become those options; every other field that
    differs from the config class's default goes to ``peft_args``; provenance (base model,
    peft version) is dropped. Only local files are read."""
    import json
    import logging
    from pathlib import Path

    given = Path(path)
    file = given / "adapter_config.json" if given.is_dir() else given
    if not file.is_file():
        raise TokenSeekError(f"--peft-config {path}: no such file; give an adapter_config.json or a folder holding one (a saved adapter)")
    try:
        raw = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenSeekError(f"--peft-config {file} is not valid JSON: {first_line(exc)}") from None
    if not isinstance(raw, dict) or str(raw.get("peft_type", "")).upper() not in _FILE_METHODS:
        found = raw.get("peft_type") if isinstance(raw, dict) else None
        raise TokenSeekError(f"--peft-config {file}: peft_type {found!r} is not an adapter tokenseek trains ({', '.join(_FILE_METHODS)})")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise TokenSeekError(f"--peft-config {file}: task_type {raw['task_type']} is not CAUSAL_LM; tokenseek fine-tunes causal language models")
    method = _FILE_METHODS[str(raw["peft_type"]).upper()]
    reference = _config_class(method)(task_type="CAUSAL_LM")
    options, extra, unknown = {}, {}, []
    for key, value in raw.items():
        option = _option_setting(method, key)
        if option == "target_modules":
            options[option] = _target_modules_option(value, file)
        elif option:
            options[option] = value
        elif key in _PROVENANCE_FIELDS:
            continue
        elif not hasattr(reference, key):
            unknown.append(key)
        elif not _same(value, getattr(reference, key)):
            extra[key] = value
    if unknown:
        logging.getLogger(__name__).warning("--peft-config %s: ignored field(s) this peft does not know: %s", file, ", ".join(sorted(unknown)))
    return method, options, extra


def _target_modules_option(value, file) -> str | None:
    """A saved ``target_modules`` as ``--target-modules`` (comma-separated names; None: all linear)."""
    if value is None or value == "all-linear":
        return None
    if isinstance(value, str):
        raise TokenSeekError(f"--peft-config {file}: target_modules is the pattern {value!r}; list the module names instead (e.g. [q_proj, v_proj])")
    return ",".join(sorted(value))


def _same(saved, default) -> bool:
    """A JSON value against a config default (sets are saved as lists, tuples as lists)."""
    if isinstance(default, (set, frozenset)):
        return isinstance(saved, list) and set(saved) == default
    if isinstance(default, tuple):
        return saved == list(default)
    return saved == default
