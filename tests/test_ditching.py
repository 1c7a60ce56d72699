"""Token ditching gradients are exact: ratio 1.0 equals plain HF training, and any keep mask
equals an independent detach-based reference (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHITECTURES, padded_batch, random_keep, tiny_model
from reference import grads, max_relative_error, reference_loss
from tokenseek import ditched_loss
from tokenseek.errors import UnsupportedModelError
from tokenseek.models.introspect import decoder_layers


def _plain_grads(model, input_ids, attention_mask, labels):
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    return loss.detach(), grads(model)


def _ditched_grads(model, input_ids, attention_mask, labels, keep):
    loss = ditched_loss(model, input_ids, labels, keep, attention_mask)
    loss.backward()
    return loss.detach(), grads(model)


def _reference_grads(model, input_ids, attention_mask, labels, keep):
    loss = reference_loss(model, input_ids, attention_mask, labels, keep, decoder_layers(model))
    loss.backward()
    return loss.detach(), grads(model)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_full_ratio_equals_plain_training(arch):
    model = tiny_model(arch).eval()
    input_ids, attention_mask, labels = padded_batch()
    loss, g = _ditched_grads(model, input_ids, attention_mask, labels, attention_mask.bool())
    ref_loss, ref_g = _plain_grads(model, input_ids, attention_mask, labels)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert max_relative_error(g, ref_g) <= 1e-5


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_random_keep_equals_detached_reference(arch, ratio):
    model = tiny_model(arch).eval()
    input_ids, attention_mask, _ = padded_batch(seed=1, lengths=(31, 12, 20))
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    keep = random_keep(attention_mask, ratio, seed=2)
    loss, g = _ditched_grads(model, input_ids, attention_mask, labels, keep)
    ref_loss, ref_g = _reference_grads(model, input_ids, attention_mask, labels, keep)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert max_relative_error(g, ref_g) <= 1e-4
    # The reference differs from plain training, so this is not a vacuous match.
    _, plain = _plain_grads(model, input_ids, attention_mask, labels)
    assert max_relative_error(g, plain) > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_lora_gradients_match_reference(arch):
    import peft

    model = peft.get_peft_model(tiny_model(arch), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()
    input_ids, attention_mask, labels = padded_batch(seed=3)
    keep = random_keep(attention_mask, 0.3, seed=4)
    _, g = _ditched_grads(model, input_ids, attention_mask, labels, keep)
    _, ref_g = _reference_grads(model, input_ids, attention_mask, labels, keep)
    assert g and all("lora_" in k for k in g)
    assert max_relative_error(g, ref_g) <= 1e-4
    _, full = _ditched_grads(model, input_ids, attention_mask, labels, attention_mask.bool())
    _, plain = _plain_grads(model, input_ids, attention_mask, labels)
    assert max_relative_error(full, plain) <= 1e-5


@pytest.mark.parametrize("method, extra", [("loha", {}), ("lokr", {}), ("ia3", {}), ("lora", {"use_dora": True})], ids=["loha", "lokr", "ia3", "dora"])
def test_other_adapter_gradients_match_reference(method, extra):
    """The adapters `tokenseek train --peft loha|lokr|ia3` (and `--peft-arg use_dora=true`, whose
    layers compute a weight norm in their forward) build get the exact ditched gradients."""
    from tokenseek.models import apply_peft

    model = apply_peft(tiny_model("llama"), method, r=4, alpha=8, dropout=0.0, extra=extra)
    torch.manual_seed(1)
    with torch.no_grad():  # some factors start at zero (LoHa/LoKr) or one (IA3): make every adapter non-trivial
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    input_ids, attention_mask, labels = padded_batch(seed=3)
    keep = random_keep(attention_mask, 0.3, seed=4)
    _, g = _ditched_grads(model, input_ids, attention_mask, labels, keep)
    _, ref_g = _reference_grads(model, input_ids, attention_mask, labels, keep)
    prefix = {"loha": "hada_", "lokr": "lokr_", "ia3": "ia3_", "lora": "lora_"}[method]
    if extra.get("use_dora"):
        assert any("lora_magnitude_vector" in k for k in g), sorted(g)[:3]
    assert g and all(prefix in k for k in g), sorted(g)[:3]  # only the adapter trains
    assert max_relative_error(g, ref_g) <= 1e-4
    # Not vacuous: the reference differs from plain full-token training.
    _, plain = _plain_grads(model, input_ids, attention_mask, labels)
    assert max_relative_error(g, plain) > 1e-3


def test_eager_attention_model_is_supported():
    model = tiny_model("llama", attn="eager").eval()
    input_ids, attention_mask, labels = padded_batch()
    keep = random_keep(attention_mask, 0.3)
    _, g = _ditched_grads(model, input_ids, attention_mask, labels, keep)
    _, ref_g = _reference_grads(model, input_ids, attention_mask, labels, keep)
    assert max_relative_error(g, ref_g) <= 1e-4


def test_unkept_tokens_get_no_embedding_gradient():
    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch(lengths=(20,))
    input_ids[0] = torch.arange(20)  # distinct tokens, so embedding rows map to positions
    keep = random_keep(attention_mask, 0.2, seed=5)
    ditched_loss(model, input_ids, input_ids.clone(), keep, attention_mask).backward()
    row_has_grad = model.get_input_embeddings().weight.grad[:20].abs().sum(-1) > 0
    # Kept tokens' embeddings get gradient; unkept ones only through ... nothing.
    assert torch.equal(row_has_grad, keep[0])


def test_unsupported_model_named():
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.for_model("t5", vocab_size=50, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    model = AutoModelForSeq2SeqLM.from_config(config)
    ids = torch.randint(0, 50, (1, 8))
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        ditched_loss(model, ids, ids, torch.ones_like(ids, dtype=torch.bool))


def _saved_activation_bytes(model, fn) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_activation_bytes_shrink_with_ratio():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
    ids = torch.randint(0, 1000, (1, 256))
    full = _saved_activation_bytes(model, lambda: ditched_loss(model, ids, ids, torch.ones_like(ids, dtype=torch.bool)))
    keep = random_keep(torch.ones_like(ids), 0.1)
    tenth = _saved_activation_bytes(model, lambda: ditched_loss(model, ids, ids, keep))
    assert tenth <= 0.30 * full, (tenth, full)


@pytest.mark.slow
def test_smollm2_gradients(smollm2):
    # float64 copy: over 30 layers float32 rounding alone reaches ~3e-5 relative (two
    # passes sum in a different order), which would hide nothing but fail the 1e-5 bound.
    import copy

    model, tokenizer = smollm2
    model = copy.deepcopy(model).double().eval()
    texts = ["The capital of France is Paris, and it is known for the Eiffel Tower and fine food.", "Two plus two equals four."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    # Only the last two layers train, to keep the reference cheap; the rest are frozen.
    trainable = [p for n, p in model.named_parameters() if ".layers.28." in n or ".layers.29." in n]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        _, full = _ditched_grads(model, input_ids, attention_mask, labels, attention_mask.bool())
        _, plain = _plain_grads(model, input_ids, attention_mask, labels)
        assert max_relative_error(full, plain) <= 1e-5
        keep = random_keep(attention_mask, 0.3, seed=7)
        _, g = _ditched_grads(model, input_ids, attention_mask, labels, keep)
        _, ref_g = _reference_grads(model, input_ids, attention_mask, labels, keep)
        assert max_relative_error(g, ref_g) <= 1e-4
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_chunked_context_pass_equals_reference(arch, monkeypatch):
    """The context pass run in pieces (chunked prefill) against the growing cache gives the
    same cache and the same ditched gradients as the independent reference."""
    from tokenseek.ditching import forward

    model = tiny_model(arch).eval()
    input_ids, attention_mask, _ = padded_batch(seed=3, lengths=(31, 12, 20))
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    whole = forward.context_pass(model, input_ids, attention_mask, chunk=0)
    pieces = forward.context_pass(model, input_ids, attention_mask, chunk=5)
    for a, b in zip(whole.layers, pieces.layers):
        assert a.keys.shape == b.keys.shape
        real = attention_mask.bool()[:, None, :, None]  # padding rows are never read
        assert torch.allclose(a.keys * real, b.keys * real, atol=1e-5)
        assert torch.allclose(a.values * real, b.values * real, atol=1e-5)
    monkeypatch.setitem(forward.CONTEXT_CHUNK, "cpu", 5)
    keep = random_keep(attention_mask, 0.3, seed=4)
    loss, g = _ditched_grads(model, input_ids, attention_mask, labels, keep)
    ref_loss, ref_g = _reference_grads(model, input_ids, attention_mask, labels, keep)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert max_relative_error(g, ref_g) <= 1e-4


def test_context_chunk_sets_the_calls_of_the_context_pass(monkeypatch):
    """``context_chunk`` reaches the context pass from the training loss; unset, the device's
    default applies (256 tokens on a CPU, where small pieces cost no time)."""
    from tokenseek.ditching import forward
    from tokenseek.ditching.loss import kept_targets, step_loss_sums
    from tokenseek.models.introspect import decoder

    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch(seed=3, lengths=(31, 12, 20))
    keep = random_keep(attention_mask, 0.3, seed=4)
    calls = []
    decoder(model).register_forward_pre_hook(lambda *_: calls.append(1))

    def decoder_calls(**kwargs) -> int:
        calls.clear()
        step_loss_sums(model, input_ids, attention_mask, kept_targets(labels, keep), keep, **kwargs)
        return len(calls)

    assert decoder_calls(context_chunk=5) == 7 + 1  # ceil(31 / 5) pieces, then the kept pass
    assert decoder_calls(context_chunk=0) == 1 + 1
    assert forward.context_chunk("cpu") == 256 and decoder_calls() == 1 + 1
    monkeypatch.setitem(forward.CONTEXT_CHUNK, "cpu", 10)
    assert decoder_calls() == 4 + 1


class _TakesCache(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        return None


class _TakesPastKeyValues(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None):
        return None


class _TakesNoCache(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return None


def test_the_cache_goes_under_the_name_the_model_takes():
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; both must keep working."""
    from types import SimpleNamespace

    from tokenseek.models.introspect import output_cache, with_cache

    marker = object()
    assert with_cache(_TakesCache(), marker) == {"cache": marker}
    assert with_cache(_TakesPastKeyValues(), marker) == {"past_key_values": marker}
    with pytest.raises(UnsupportedModelError, match="_TakesNoCache.forward takes no KV cache"):
        with_cache(_TakesNoCache(), marker)
    assert output_cache(SimpleNamespace(cache=marker)) is marker
    assert output_cache(SimpleNamespace(past_key_values=marker)) is marker
    assert output_cache(SimpleNamespace(cache=None, past_key_values=marker)) is marker


def test_ditching_passes_no_deprecated_argument():
    """A deprecated argument name would warn on every step (and break when transformers drops it)."""
    import warnings

    model = tiny_model("llama").eval()
    input_ids, attention_mask, labels = padded_batch()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(past_key_values|deprecated).*")
        ditched_loss(model, input_ids, labels, random_keep(attention_mask, 0.5), attention_mask).backward()
