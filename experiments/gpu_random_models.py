"""Random-weight models for the GPU benchmarks (docs/BENCHMARKS.md "On a GPU"): SmolLM2-135M's
shape and a Llama-3.2-1B-like shape (2048 hidden, 16 layers, 32 query / 8 KV heads), both with
SmolLM2's tokenizer and vocabulary. Step memory and time do not depend on the weights' values,
and a GPU machine without the network cannot fetch real ones.

    python3 experiments/gpu_random_models.py SMOLLM2_DIR OUT_DIR

SMOLLM2_DIR: a SmolLM2-135M-Instruct directory (its config and tokenizer files are read; the
GGUF conversion in ~/.cache/tokenseek/gguf/ will do).
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

src, root = Path(sys.argv[1]), Path(sys.argv[2])
shapes = {
    "smollm2-135m": {},
    "llama-1b-shape": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64},
}
for name, change in shapes.items():
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    cfg = {**json.loads((src / "config.json").read_text()), **change}
    (out / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.bfloat16)
    model.save_pretrained(out)
    print(name, sum(p.numel() for p in model.parameters()) / 1e6, "M params")
