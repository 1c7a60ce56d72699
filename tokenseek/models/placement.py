"""Where a process puts its model (device) and in which precision (``--dtype``).

One process per device, the way torchrun / ``accelerate launch`` start them: each
process uses the GPU its launcher gave it (``LOCAL_RANK``), never a hard-coded
``cuda:0``, and the CPU when there is no GPU.

Precision follows the usual mixed-precision conventions (TRL, axolotl, LLaMA-Factory):

- PEFT (LoRA, LoHa, LoKr, IA3): the frozen base model is *stored* in ``--dtype``;
  the adapters stay fp32 (peft's ``autocast_adapter_dtype``), so the optimizer state
  is fp32, and the Trainer autocasts the compute (``bf16=True`` / ``fp16=True``).
- QLoRA: the base is NF4 and its ``bnb_4bit_compute_dtype`` is ``--dtype``.
- Full fine-tuning: weights (the optimizer's master copy) stay fp32, only the compute
  is autocast by the Trainer — storing trainable weights in bf16 loses small updates.
"""

from __future__ import annotations

import os

import torch

from tokenseek.errors import TokenSeekError

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def local_rank() -> int:
    """This process's index on its machine (set by torchrun and accelerate; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def default_device() -> torch.device:
    """This process's GPU (``cuda:LOCAL_RANK``) or the CPU when there is none."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str | None = None) -> torch.dtype:
    """``--dtype`` as a torch dtype; ``auto`` is bf16 on a GPU that supports it, else fp32."""
    if isinstance(name, torch.dtype):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        device = torch.device(device) if device is not None else default_device()
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise TokenSeekError(f"unknown --dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The ``--dtype`` spelling of a torch dtype (``bf16``, ``fp16``, ``fp32``)."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """A recorded dtype (``bf16``, ``bfloat16``, ``torch.bfloat16`` or a dtype) as a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    text = str(name or "").removeprefix("torch.")
    found = _DTYPES.get(text, getattr(torch, text, None) if text else None)
    return found if isinstance(found, torch.dtype) else default


def storage_dtype(compute: torch.dtype, peft: str) -> torch.dtype:
    """The dtype the base weights are loaded in for a run computing in ``compute``.

    Full fine-tuning keeps fp32 master weights (the Trainer autocasts); a frozen base
    under adapters, quantised or not, is stored in the compute dtype.
    """
    return torch.float32 if peft == "none" else compute


def trainer_precision(compute: torch.dtype) -> dict:
    """TrainingArguments for autocast in ``compute`` (none for fp32)."""
    return {"bf16": compute == torch.bfloat16, "fp16": compute == torch.float16}
