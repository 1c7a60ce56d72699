"""Chunked cross-entropy and gradient checkpointing compose with ditching, with exact gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, padded_batch, random_keep, tiny_model
from reference import grads, max_relative_error, reference_loss
from tokenseek.ditching.loss import full_loss_sums, kept_targets, step_loss_sums
from tokenseek.models.introspect import decoder_layers, disable_checkpointing, enable_checkpointing

CHECKPOINT_ARCHS = ["llama", "gemma3_text", "qwen3", "gpt_neox"]


def _ditched_grads(model, ids, mask, labels, keep, chunk):
    sums = step_loss_sums(model, ids, mask, kept_targets(labels, keep), keep, loss_chunk=chunk)
    loss = sums.token_mean()
    loss.backward()
    return loss.detach(), grads(model)


# ----------------------------------------------------------------------------- chunked CE
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_chunked_loss_equals_one_big_cross_entropy(ratio):
    model = tiny_model("llama").eval()
    ids, mask, labels = padded_batch(seed=2, lengths=(40, 33, 27))
    keep = random_keep(mask, ratio, seed=1) if ratio < 1 else mask.bool()
    loss, g = _ditched_grads(model, ids, mask, labels, keep, chunk=0)
    for chunk in (1, 7, 16):
        chunked_loss, chunked_g = _ditched_grads(model, ids, mask, labels, keep, chunk=chunk)
        assert float((chunked_loss - loss).abs() / loss.abs()) <= 1e-6
        assert max_relative_error(chunked_g, g) <= 1e-5


def test_full_token_chunked_loss_equals_hf_loss():
    model = tiny_model("qwen2").eval()
    ids, mask, labels = padded_batch(seed=3)
    hf = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    hf.backward()
    hf_g = grads(model)
    shift = torch.full_like(labels, -100)
    shift[:, :-1] = labels[:, 1:]
    ours = full_loss_sums(model, ids, mask, shift, loss_chunk=5).token_mean()
    ours.backward()
    assert float((ours.detach() - hf.detach()).abs() / hf.detach()) <= 1e-6
    assert max_relative_error(grads(model), hf_g) <= 1e-5


def _largest_saved_vocab_rows(model, fn) -> int:
    """Rows of the largest saved tensor with a vocabulary-sized dimension (logits or their softmax)."""
    largest = 0
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        nonlocal largest
        if VOCAB in t.shape and t.untyped_storage().data_ptr() not in weights:
            largest = max(largest, t.numel() // VOCAB)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().backward()
    model.zero_grad(set_to_none=True)
    return largest


def test_chunked_loss_never_saves_more_than_one_chunk_of_logits():
    model = tiny_model("llama").eval()
    ids, mask, labels = padded_batch(seed=4, lengths=(60, 60))
    keep = mask.bool()
    shift = kept_targets(labels, keep)
    plain = _largest_saved_vocab_rows(model, lambda: step_loss_sums(model, ids, mask, shift, keep, loss_chunk=0).token_mean())
    chunked = _largest_saved_vocab_rows(model, lambda: step_loss_sums(model, ids, mask, shift, keep, loss_chunk=8).token_mean())
    assert plain >= 100  # without chunking the [positions, vocab] logits are saved whole
    # Checkpointed chunks save only their inputs: logits exist one chunk at a time, inside the chunk
    # (recomputed in backward, where the checkpoint's own storage holds them).
    assert chunked == 0


# ----------------------------------------------------------------------------- gradient checkpointing
@pytest.mark.parametrize("arch", CHECKPOINT_ARCHS)
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_kept_pass_equals_reference_full_finetuning(arch, reentrant):
    model = tiny_model(arch)
    enable_checkpointing(model, use_reentrant=reentrant)
    model.config.use_cache = True
    model.train()
    for module in model.modules():  # training mode for checkpointing, but no dropout to compare against
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0
    ids, mask, labels = padded_batch(seed=5, lengths=(30, 19, 24))
    keep = random_keep(mask, 0.3, seed=3)
    if reentrant:  # reentrant checkpointing needs an input that requires grad (transformers' own rule)
        model.enable_input_require_grads()
    loss, g = _ditched_grads(model, ids, mask, labels, keep, chunk=8)
    disable_checkpointing(model)
    ref = reference_loss(model, ids, mask, labels, keep, decoder_layers(model))
    ref.backward()
    assert torch.allclose(loss, ref.detach(), rtol=1e-5)
    assert max_relative_error(g, grads(model)) <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen2"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_kept_pass_equals_reference_lora(arch, reentrant):
    from tokenseek.models import apply_peft

    model = apply_peft(tiny_model(arch), "lora", r=4, alpha=8, dropout=0.0)
    enable_checkpointing(model, use_reentrant=reentrant)
    if reentrant:
        model.enable_input_require_grads()
    model.train()
    ids, mask, labels = padded_batch(seed=6, lengths=(28, 21))
    keep = random_keep(mask, 0.25, seed=4)
    loss, g = _ditched_grads(model, ids, mask, labels, keep, chunk=8)
    assert g and all("lora" in k for k in g)
    disable_checkpointing(model.base_model.model)
    reference_loss(model, ids, mask, labels, keep, decoder_layers(model)).backward()
    assert max_relative_error(g, grads(model)) <= 1e-4


def test_checkpointing_saves_less_than_without():
    """The kept pass under checkpointing stores layer inputs only (a measured, not assumed, saving)."""
    model = tiny_model("llama").train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids = torch.randint(0, VOCAB, (1, 128))
    mask = torch.ones_like(ids)
    keep = random_keep(mask, 0.5, seed=0)
    shift = kept_targets(ids, keep)

    def saved_bytes():
        seen = {}

        def pack(t):
            if not isinstance(t, torch.nn.Parameter):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step_loss_sums(model, ids, mask, shift, keep, loss_chunk=16).token_mean().backward()
        model.zero_grad(set_to_none=True)
        return sum(seen.values())

    without = saved_bytes()
    enable_checkpointing(model, use_reentrant=False)
    with_checkpointing = saved_bytes()
    assert with_checkpointing < 0.6 * without


def test_checkpointed_step_walks_the_model_for_attention_configs_once(monkeypatch):
    """Finding the attention configs walks every module (9–11 ms for SmolLM2 with LoRA): a
    checkpointed kept pass must not repeat it in each layer's forward and recompute, which
    made the step several times slower on a GPU (docs/BENCHMARKS.md "On a GPU")."""
    from tokenseek.ditching import attention, forward
    from tokenseek.models import apply_peft
    from tokenseek.models.introspect import attention_configs

    walks = []

    def counted(model):
        walks.append(1)
        return attention_configs(model)

    monkeypatch.setattr(attention, "attention_configs", counted)
    monkeypatch.setattr(forward, "attention_configs", counted)
    model = apply_peft(tiny_model("llama"), "lora", r=4, alpha=8, dropout=0.0)
    enable_checkpointing(model, use_reentrant=False)
    model.train()
    ids, mask, labels = padded_batch(seed=6, lengths=(28, 21))
    keep = random_keep(mask, 0.25, seed=4)
    _ditched_grads(model, ids, mask, labels, keep, chunk=8)
    assert len(decoder_layers(model)) >= 2 and len(walks) <= 2
