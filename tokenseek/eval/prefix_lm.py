"""An lm-eval model that runs each shared context once: ``tokenseek-prefix``.

lm-eval's ``HFLM`` scores a multiple-choice item by running context + choice once per
choice, so a 25-shot ARC item computes the same ~1.5k-token prompt four times (and
materialises ``[tokens, vocab]`` logits for all of it each time). :class:`PrefixCachedLM`
groups the requests whose model input starts with the same context tokens, runs that
context once into a KV cache, and scores every continuation of the group against it.

Exactness with ``HFLM``: only ``_loglikelihood_tokens`` is overridden, so the
tokenisation (``_encode_pair``'s context/continuation split, the empty-context prefix
token) is HFLM's own. Each request feeds the model the same tokens at the same positions
as HFLM's ``_loglikelihood_tokens`` (including its left truncation to ``max_length``), and
the scored positions see the same causal attention, so log-likelihoods agree up to float
rounding. Requests that share their context with no other request, and seq2seq models,
go to HFLM unchanged.

Importing this module registers the model with lm-eval (``--model tokenseek-prefix``);
``python -m tokenseek.eval.lm_eval_cli ARGS`` is lm-eval's own CLI with it registered.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from tokenseek.models.introspect import output_cache, with_cache

logger = logging.getLogger(__name__)

MODEL_NAME = "tokenseek-prefix"


@register_model(MODEL_NAME)
class PrefixCachedLM(HFLM):
    """``HFLM`` that computes each shared context once into a KV cache (causal models)."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        truncated = 0
        for i, (_, context_enc, continuation_enc) in enumerate(requests):
            prefix = self._visible_context(context_enc, continuation_enc)
            truncated += len(prefix) < len(context_enc)
            groups[prefix].append(i)
        if truncated:
            logger.warning("%d of %d requests exceed max_length %d: their contexts are truncated from the left, as HFLM does", truncated, len(requests), self.max_length)

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # A context nobody else shares gains nothing from a cache, and HFLM batches
        # such requests across items; give them to HFLM as they are.
        alone = [idx[0] for idx in groups.values() if len(idx) == 1]
        if alone:
            for i, answer in zip(alone, super()._loglikelihood_tokens([requests[i] for i in alone], disable_tqdm=disable_tqdm, override_bs=override_bs), strict=True):
                results[i] = answer

        shared = [(prefix, idx) for prefix, idx in groups.items() if len(idx) > 1]
        # Longest contexts first, as HFLM orders its requests: memory errors show up at once.
        shared.sort(key=lambda item: -len(item[0]))
        bar = tqdm(total=sum(len(idx) for _, idx in shared), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests (shared contexts)")
        for prefix, idx in shared:
            for i, answer in zip(idx, self._score_group(prefix, [requests[i] for i in idx], override_bs), strict=True):
                results[i] = answer
                request_str = requests[i][0]
                if request_str is not None:  # loglikelihood_rolling's windows have no key; it caches per document
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
                bar.update(1)
        bar.close()
        return results

    def _visible_context(self, context_enc: list[int], continuation_enc: list[int]) -> tuple[int, ...]:
        """The context tokens HFLM feeds the model for this request (positions 0..).

        HFLM's input is ``(context + continuation)[-(max_length + 1):][:-1]`` and it scores
        the last ``len(continuation)`` positions. That input is the kept context tokens
        (positions from 0, at least one since ``len(continuation) <= max_length``) followed
        by ``continuation[:-1]``. Two requests can share a cache exactly when their kept
        context tokens are equal, so those tokens are the group key.
        """
        assert len(context_enc) > 0 and len(continuation_enc) > 0  # HFLM's own checks
        assert len(continuation_enc) <= self.max_length
        window = (context_enc + continuation_enc)[-(self.max_length + 1) :]
        kept = len(window) - len(continuation_enc)
        return tuple(window[:kept])

    def _score_group(self, prefix: tuple[int, ...], group, override_bs: int | None) -> list[tuple[float, bool]]:
        """Run ``prefix[:-1]`` once, then feed ``prefix[-1:] + continuation[:-1]`` per request.

        Feeding the last context token with the continuation (rather than keeping the
        context's last logits) makes every scored logit come from the continuation pass,
        so one-token continuations (MMLU's letters) need no special case.
        """
        cache = self._prefill(prefix[:-1]) if len(prefix) > 1 else None
        width = self._group_batch_size(len(group), override_bs)
        out: list[tuple[float, bool]] = []
        for start in range(0, len(group), width):
            chunk = group[start : start + width]
            conts = [cont for _, _, cont in chunk]
            feeds = [[prefix[-1], *cont[:-1]] for cont in conts]
            length = max(len(f) for f in feeds)
            # Right padding after the scored tokens: causal attention keeps it out of them.
            inputs = torch.tensor([f + [0] * (length - len(f)) for f in feeds], dtype=torch.long, device=self.device)
            past = None
            if cache is not None:
                # The forward appends to the cache it is given: the last chunk may use the
                # group's cache itself, earlier ones need a copy.
                past = cache if start + width >= len(group) else copy.deepcopy(cache)
                if len(chunk) > 1:
                    past.batch_repeat_interleave(len(chunk))
            logprobs = F.log_softmax(self._forward(inputs, past), dim=-1, dtype=self.softmax_dtype)
            for row, cont in enumerate(conts):
                scored = logprobs[row, : len(cont)]
                target = torch.tensor(cont, dtype=torch.long, device=scored.device)
                is_greedy = bool((scored.argmax(dim=-1) == target).all())
                out.append((float(scored.gather(1, target[:, None]).sum()), is_greedy))
        return out

    def _group_batch_size(self, n: int, override_bs: int | None) -> int:
        """``--batch-size`` continuations per forward; with "auto", a whole group (they are short)."""
        size = self.batch_size if isinstance(self.batch_size, int) else override_bs
        return max(1, min(n, size)) if size else n

    def _prefill(self, tokens: tuple[int, ...]):
        """The KV cache of ``tokens`` at positions 0.. (as HFLM's input starts), batch 1.

        The model builds its own cache type (sliding-window layers included); only one
        position's logits are asked for, since none of them is scored.
        """
        inputs = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self._forward(inputs, None, use_cache=True, logits_to_keep=1, want_cache=True)

    def _forward(self, inputs: torch.Tensor, past, *, use_cache: bool | None = None, logits_to_keep: int | None = None, want_cache: bool = False):
        kwargs = with_cache(self.model, past) if past is not None else {}
        if use_cache is not None:
            kwargs["use_cache"] = use_cache
        if logits_to_keep is not None:
            kwargs["logits_to_keep"] = logits_to_keep
        # Same no-grad / autocast setting as HFLM's _model_call, which takes no cache.
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None):
            try:
                output = self.model(input_ids=inputs, **kwargs)
            except TypeError:
                if "logits_to_keep" not in kwargs:
                    raise
                # A model without logits_to_keep: all positions' logits, same cache.
                kwargs.pop("logits_to_keep")
                output = self.model(input_ids=inputs, **kwargs)
        return output_cache(output) if want_cache else output.logits

