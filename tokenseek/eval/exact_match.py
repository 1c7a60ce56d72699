"""Exact-match accuracy of greedy answers: the downstream metric of short-answer studies.

One code path for every model: the base model and a fine-tuned run are both loaded by
``tokenseek.eval.model.load_for_eval`` and answered here with the prompt tokens training used
(``tokenseek.data.prompt_ids``), greedy decoding, and the same normaliser. The answer is the
first non-empty line the model writes after the prompt; comparison ignores case, runs of
whitespace, spaces around commas and a final full stop, so a right answer is not failed on
formatting noise while a different value, item or order still fails.
"""

from __future__ import annotations

import re

import torch

from tokenseek.data.templates import DEFAULT_TEMPLATE
from tokenseek.errors import TokenSeekError


def extract_answer(generated: str) -> str:
    """The first non-empty line of the generated text (a model may go on after the answer)."""
    text = generated.lstrip()
    return text.split("\n", 1)[0].strip()


def normalise_answer(text: str) -> str:
    text = extract_answer(text).lower()
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,\s*", ", ", text)
    return text.rstrip(".").strip()


def is_correct(prediction: str, reference: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(reference)


class _LineDone:
    """Stop a row once its answer line is complete (a newline after some text): the rest is
    never scored, and a base model that rambles would otherwise cost max_new_tokens every time."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def greedy_answers(
    model, tokenizer, records: list[dict], *, template: str = DEFAULT_TEMPLATE, max_new_tokens: int = 40, batch_size: int = 8, progress: bool = False
) -> list[str]:
    """Greedy continuations of each record's prompt (decoded, special tokens dropped), in order.

    Prompts are left-padded into batches of similar length so every row's answer starts at the
    same column; the attention mask keeps the padding out of attention and positions.
    ``progress``: a bar over the batches (on stderr).
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, StoppingCriteriaList

    from tokenseek.data import prompt_ids
    from tokenseek.models.loading import disable_bnb_inference_repacking

    prompts = [prompt_ids(r, tokenizer, template) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Explicit: a model's own generation_config may ask for sampling.
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    disable_bnb_inference_repacking(model)  # an eval forward must not corrupt later QLoRA training
    model.eval()
    answers: list[str] = [""] * len(records)
    try:
        for start in tqdm(range(0, len(order), max(1, batch_size)), desc="greedy answers", unit="batch", disable=not progress):
            rows = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):
                n = len(prompts[i])
                ids[row, width - n :] = torch.tensor(prompts[i])
                mask[row, width - n :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([_LineDone(tokenizer, width)]),
            )
            for row, text in zip(rows, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                answers[row] = text
    finally:
        model.train(was_training)
    return answers


def check_answer_budget(tokenizer, records: list[dict], max_new_tokens: int, setting: str = "eval.exact_match_max_new_tokens") -> None:
    """Refuse a budget too small for a reference answer (it could never be matched);
    ``setting`` names where the user sets the budget (a study key or a CLI flag)."""
    longest = max((len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in records), default=0)
    if longest > max_new_tokens:
        raise TokenSeekError(
            f"a reference answer is {longest} tokens but exact match generates at most {max_new_tokens}: "
            f"raise {setting} to at least {longest}"
        )


def exact_match(
    model,
    tokenizer,
    records: list[dict],
    *,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    tasks: list[str | None] | None = None,
    budget_setting: str = "eval.exact_match_max_new_tokens",
    progress: bool = False,
) -> dict:
    """Accuracy of greedy answers against each record's ``output``, with the per-example
    correctness (so two models on the same records can be compared pairwise) and the answers.
    ``tasks`` (one name per record) adds a per-task breakdown."""
    check_answer_budget(tokenizer, records, max_new_tokens, budget_setting)
    answers = greedy_answers(model, tokenizer, records, template=template, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    correct = [int(is_correct(a, r["output"])) for a, r in zip(answers, records)]
    out = {
        "records": len(records),
        "correct": sum(correct),
        "accuracy": sum(correct) / len(records) if records else None,
        "template": template,
        "max_new_tokens": max_new_tokens,
        "per_example_correct": correct,
        "answers": [extract_answer(a) for a in answers],
    }
    if tasks is not None:
        per_task: dict[str, list[int]] = {}
        for name, ok in zip(tasks, correct):
            per_task.setdefault(str(name), []).append(ok)
        out["per_task"] = {name: {"records": len(v), "accuracy": sum(v) / len(v)} for name, v in sorted(per_task.items())}
    return out
