"""The two-pass ditched forward: full context without grad, kept tokens with grad.

Pass 1 (:func:`context_pass`) runs the whole sequence under ``no_grad`` and fills a KV
cache, so every token still acts as context and nothing of it is stored for backward.
Pass 2 (:func:`kept_pass`) runs only the kept tokens, at their original positions, against
that cache. Forward values equal the full-sequence ones; autograd only sees the kept
tokens — the paper's Algorithm 1 / Eq. 6 without touching any model's code.

Two departures from Algorithm 1, both deliberate:

- The context pass runs in eval mode, so **without dropout** (LoRA's dropout included).
  Algorithm 1 runs the whole sequence in training mode, so there the context keys/values
  of unkept tokens carry dropout noise; here they are the clean values. The kept tokens'
  own computation (pass 2) still uses dropout as usual. We do it because drawing the
  dropout masks was about a third of the context pass on CPU, and the context gets no
  gradient either way — but it does change the context K/V relative to the paper.
- After the context pass the cache is frozen (:class:`ContextCache`): the kept pass reads
  it but never writes to it. A layer can therefore run again in backward — gradient
  checkpointing — and see exactly the same context.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from transformers import DynamicCache

from tokenseek.ditching.attention import (
    attention_windows,
    check_supports_ditching,
    kept_pass_attention,
    kept_pass_mask,
)
from tokenseek.models.introspect import attention_configs, capture_final_hidden, decoder_layers, eval_mode, unwrap, with_cache


class ContextCache(DynamicCache):
    """The context pass's keys/values; read-only once :meth:`freeze` is called.

    A frozen cache answers ``update(new_k, new_v, layer)`` with ``cat(cached, new)`` and
    stores nothing, so recomputing a layer (checkpointing) gives the same keys again.
    No config is given to ``DynamicCache``: a config-built cache would trim
    sliding-window layers, and the kept pass indexes the cache by absolute position.
    """

    frozen = False

    def freeze(self) -> "ContextCache":
        self.frozen = True
        return self

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if not self.frozen:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


@dataclass
class DitchedOutput:
    logits: torch.Tensor | None  # [B, K, vocab], one row per kept slot (None when hidden states were asked for)
    positions: torch.Tensor  # [B, K] original position of each kept slot
    slot_valid: torch.Tensor  # [B, K] False for padding slots (examples keep different counts)
    hidden: torch.Tensor | None = None  # [B, K, d] final hidden states (post norm), when asked for


def kept_slots(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the kept tokens, in order, padded to the largest count in the batch."""
    counts = keep.sum(dim=1)
    width = int(counts.max()) if keep.numel() else 0
    # A stable sort of "not kept" brings the kept positions to the front, in order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    positions = order[:, :width]
    slot_valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return positions.masked_fill(~slot_valid, 0), slot_valid


def no_logits_kwargs(model, device) -> dict:
    """Ask the model for no logits at all (the LM head is the costliest matmul), if it can."""
    if "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters:
        return {"logits_to_keep": torch.zeros(0, dtype=torch.long, device=device)}
    return {}


# Tokens per call of the context pass, by device type. Running the context in pieces against
# the growing cache (chunked prefill) gives the same keys/values but bounds the pass's
# temporaries (attention scores, MLP activations) by the chunk instead of the sequence: at
# seq 1024 on SmolLM2 (CPU) the whole-sequence pass's peak sat 33 MiB above its 45 MiB cache.
# On a GPU every call also pays a fixed launch overhead that small pieces do not amortise
# (H100, LoRA, eager: ~40 ms per call of a 16-layer 1B model whatever its length), so pieces
# there are larger (docs/BENCHMARKS.md "On a GPU").
CONTEXT_CHUNK = {"cpu": 256, "cuda": 2048}


def context_chunk(device: torch.device | str) -> int:
    """The default tokens per context-pass call on ``device`` (other accelerators: the GPU's)."""
    kind = torch.device(device).type
    return CONTEXT_CHUNK.get(kind, CONTEXT_CHUNK["cuda"])


def context_pass(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    observe: Callable[[], contextlib.AbstractContextManager] | None = None,
    chunk: int | None = None,
) -> ContextCache:
    """Run every token once without grad (eval mode, no logits) and return the frozen cache.

    ``chunk``: tokens per model call (default: :func:`context_chunk` of the input's device; 0:
    the whole sequence at once).
    ``observe`` is entered around the pass: online seeking uses it to read the last layer's
    attention and inputs while the context is computed anyway; it needs the whole sequence
    in one call, so ``chunk`` is ignored then.
    """
    check_supports_ditching(model)
    batch, length = input_ids.shape
    position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
    chunk = context_chunk(input_ids.device) if chunk is None else chunk
    step = length if observe is not None or chunk <= 0 else chunk
    cache = ContextCache()
    # The named range shows the pass in a profiler trace (and lets `tokenseek bench` find its peak).
    with torch.profiler.record_function("tokenseek::context_pass"), eval_mode(model), torch.no_grad(), (
        observe() if observe else contextlib.nullcontext()
    ):
        for start in range(0, length, step):
            end = min(start + step, length)
            model(
                input_ids=input_ids[:, start:end],
                attention_mask=attention_mask[:, :end],  # the cached tokens' padding, then this piece's
                position_ids=position_ids[:, start:end],
                **with_cache(model, cache),
                use_cache=True,
                **no_logits_kwargs(model, input_ids.device),
            )
    return cache.freeze()


@contextlib.contextmanager
def checkpointing_for_kept_pass(model: torch.nn.Module) -> Iterator[None]:
    """Make transformers' gradient checkpointing (if the user turned it on) work in the kept pass.

    - A ``GradientCheckpointingLayer`` drops the cache argument under checkpointing unless the
      layer declares it only reads the cache — true of the frozen :class:`ContextCache`.
    - The recompute in backward runs after this pass has returned, so it must switch to the
      kept-pass attention itself (else it would run another attention function and save
      tensors of other shapes); each checkpointed call is wrapped to do so.
    The user's checkpointing function (reentrant or not) stays in charge.
    """
    layers = [layer for layer in decoder_layers(model) if getattr(layer, "gradient_checkpointing", False)]
    originals = [layer.__dict__.get("_gradient_checkpointing_func") for layer in layers]
    # Found once: walking every module for them again in each layer's forward and recompute
    # made SmolLM2's checkpointed kept pass (LoRA) 0.42 s instead of 0.07 s on an H100
    # (docs/BENCHMARKS.md "On a GPU").
    configs = attention_configs(model) if layers else []
    for layer, original in zip(layers, originals):
        layer._can_checkpoint_with_cache = True
        checkpoint_fn = original or layer._gradient_checkpointing_func

        def run_checkpointed(function, *args, _checkpoint=checkpoint_fn, **kwargs):
            def under_kept_attention(*inner, **inner_kwargs):
                with kept_pass_attention(model, configs):
                    return function(*inner, **inner_kwargs)

            return _checkpoint(under_kept_attention, *args, **kwargs)

        layer._gradient_checkpointing_func = run_checkpointed
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            del layer._can_checkpoint_with_cache  # back to the class attribute
            if original is None:
                del layer._gradient_checkpointing_func
            else:
                layer._gradient_checkpointing_func = original


def kept_pass(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: ContextCache,
    *,
    return_hidden: bool = False,
) -> DitchedOutput:
    """Run the kept tokens against the context cache, with grad.

    ``return_hidden``: skip the LM head and return the final hidden states instead, for a
    loss that applies the head itself in chunks (the ``[K, vocab]`` logits are then never
    held at once).
    """
    positions, slot_valid = kept_slots(keep)
    dtype = unwrap(model).get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    windows = attention_windows(unwrap(model).config)
    masks = {
        layer_type: kept_pass_mask(positions, slot_valid, keep, attention_mask, window, dtype)
        for layer_type, window in windows.items()
    }
    mask = masks if len(masks) > 1 else next(iter(masks.values()))
    extra = no_logits_kwargs(model, input_ids.device) if return_hidden else {}
    with torch.profiler.record_function("tokenseek::kept_pass"), kept_pass_attention(model), checkpointing_for_kept_pass(model), (
        capture_final_hidden(model) if return_hidden else contextlib.nullcontext({})
    ) as final:
        out = model(
            input_ids=torch.gather(input_ids, 1, positions),
            attention_mask=mask,
            position_ids=positions,
            **with_cache(model, cache),
            use_cache=True,
            **extra,
        )
    if return_hidden:
        return DitchedOutput(logits=None, positions=positions, slot_valid=slot_valid, hidden=final["hidden"])
    return DitchedOutput(logits=out.logits, positions=positions, slot_valid=slot_valid)


def ditched_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    cache: ContextCache | None = None,
    return_hidden: bool = False,
    context_chunk: int | None = None,
) -> DitchedOutput:
    """Logits (or final hidden states) at the kept positions, differentiable only through the kept tokens.

    ``cache``: a context pass already run on this batch (online seeking runs it itself);
    ``context_chunk``: tokens per call of the context pass (see :func:`context_pass`).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = keep.bool() & attention_mask.bool()
    if cache is None:
        cache = context_pass(model, input_ids, attention_mask, chunk=context_chunk)
    return kept_pass(model, input_ids, keep, attention_mask, cache, return_hidden=return_hidden)
