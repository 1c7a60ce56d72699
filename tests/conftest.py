"""Shared fixtures: tiny random models of several architectures, and the real SmolLM2."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VOCAB = 97
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)

# Each entry: a decoder family and the config knobs that make it tiny (and exercise its quirks).
ARCHITECTURES = {
    "llama": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=8),
    "mistral": dict(num_key_value_heads=2, sliding_window=7),
    "gemma": dict(num_key_value_heads=1, head_dim=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8, sliding_window=6, layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    "phi3": dict(num_key_value_heads=2, pad_token_id=0),
    "olmo": dict(num_key_value_heads=4),
    "gpt_neox": dict(num_key_value_heads=4),
}


def tiny_model(arch: str, seed: int = 0, attn: str = "sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(arch, **_COMMON, **ARCHITECTURES[arch])
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).float()
    # Random init is tiny; scale weights up so attention is far from uniform and gradients are not ~0.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def padded_batch(seed: int = 0, lengths=(23, 15, 9), prompt=4):
    """Right-padded batch of unequal lengths; labels only on 'response' tokens after the prompt."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(0, VOCAB, (len(lengths), width), generator=g)
    attention_mask = torch.zeros_like(input_ids)
    for i, n in enumerate(lengths):
        attention_mask[i, :n] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt] = -100
    return input_ids, attention_mask, labels


def random_keep(attention_mask: torch.Tensor, ratio: float, seed: int = 0) -> torch.Tensor:
    from tokenseek.seeking.select import select_keep

    keep = torch.zeros_like(attention_mask, dtype=torch.bool)
    for b in range(attention_mask.shape[0]):
        n = int(attention_mask[b].sum())
        keep[b, :n] = torch.from_numpy(select_keep(n, ratio, "random", seed=seed, index=b))
    return keep


@pytest.fixture(scope="session")
def smollm2():
    from tokenseek.models import load_model

    try:
        model, tokenizer = load_model(None)
    except Exception as exc:  # the default model comes from a pip package
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 not available: {exc}")
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama with the SmolLM2 tokenizer, usable as ``--model DIR``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tokenseek.models import load_tokenizer

    tokenizer = load_tokenizer(None)
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path):
    """A small Alpaca-style JSON file."""
    import json

    records = [
        {"instruction": f"Add {a} and {b}.", "input": "" if a % 2 else "numbers", "output": str(a + b)}
        for a, b in zip(range(2, 26), range(30, 54))
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path
