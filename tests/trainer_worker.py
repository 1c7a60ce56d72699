"""Run by tests/test_placement.py, alone or under torchrun: one SGD step of TokenSeekTrainer on
the 2-example batch of tests/test_train.py, optionally under DeepSpeed ZeRO (argv[1]: none, zero2,
zero3) through TrainingArguments(deepspeed=...); rank 0 saves the parameter update (argv[2]).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_model  # noqa: E402
from test_train import _features  # noqa: E402

from tokenseek.data import DitchingCollator  # noqa: E402
from tokenseek.train import TokenSeekTrainer  # noqa: E402


def deepspeed_config(stage: int) -> dict:
    zero = {"stage": stage}
    if stage == 3:
        # Partition even the tiny test model's parameters (by default ZeRO-3 keeps tensors
        # under 1e5 elements whole on every rank), and gather them for saving.
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=True)
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",  # DeepSpeed clips at 1.0 unless told max_grad_norm
        "optimizer": {"type": "SGD", "params": {"lr": "auto"}},
        "zero_allow_untested_optimizer": True,
    }


def main(mode: str, out: str) -> None:
    from transformers import TrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    extra = {"deepspeed": deepspeed_config(int(mode[-1]))} if mode.startswith("zero") else {}
    model = tiny_model("llama")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=out + ".d", per_device_train_batch_size=2 // world, gradient_accumulation_steps=1, max_steps=1,
        learning_rate=1.0, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[], use_cpu=True,
        remove_unused_columns=False, save_strategy="no", logging_steps=1, disable_tqdm=True,
        ddp_backend="gloo" if world > 1 else None, **extra,
    )
    trainer = TokenSeekTrainer(model=model, args=args, train_dataset=_features(2), data_collator=DitchingCollator(0))
    trainer.train()
    wrapped = trainer.model_wrapped
    partitioned = sum(hasattr(p, "ds_tensor") and p.data.numel() < p.ds_numel for p in wrapped.parameters())
    state = trainer.accelerator.get_state_dict(wrapped)  # gathers ZeRO-3 partitions on rank 0
    if trainer.is_world_process_zero():
        update = {k: state[k].float() - before[k] for k in before}
        torch.save({"update": update, "engine": type(wrapped).__name__, "partitioned": partitioned}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
