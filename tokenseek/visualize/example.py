"""Everything shown for one example: token strings, scores, keep masks, attention and gradient maps.

The highlights use the same selection code as training (:func:`select_keep`), so the
tokens marked as kept are exactly the ones a run with that ratio/alpha/beta would keep.
The maps (attention, gradient) are recomputed for this one example; the attention map
needs a full n x n matrix, so it comes from an eager-attention forward (fine for one
example, never done while scoring a dataset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tokenseek.errors import TokenSeekError
from tokenseek.seeking.select import DEFAULT_RATIO, DEFAULT_SELECT_FROM, score_weights

# Names of the three selections shown side by side, with the strategy that makes each.
SELECTIONS = {"context": "context", "gradient": "gradient", "combined": "tokenseek"}


@dataclass
class ExampleView:
    position: int  # position in the tokenized data (what --index names)
    record_index: int  # index of the record in the loaded data
    input_ids: list[int]
    tokens: list[str]  # display text of each token
    prompt_length: int
    labels: list[int]
    context: np.ndarray  # [n] attention received in the last layer
    gradient: np.ndarray  # [n] gradient score at the scored layer
    combined: np.ndarray  # [n] Eq. 5
    keep: dict[str, np.ndarray]  # selection name -> bool mask [n]
    ratio: float
    alpha: float
    beta: float
    select_from: str  # where the kept tokens came from (--select-from)
    layers_back: int
    grad_mode: str
    score_source: str  # "recomputed" or the score store path
    model_name: str = ""
    num_layers: int = 0
    attention: np.ndarray | None = None  # [n, n] head-averaged last-layer attention (rows: queries)
    grad_map: np.ndarray | None = None  # [n, d] gradient at the input of the scored layer
    layer_gradients: dict[int, np.ndarray] = field(default_factory=dict)  # layers_back -> [n] gradient score

    @property
    def n(self) -> int:
        return len(self.input_ids)

    @property
    def k(self) -> int:
        return int(self.keep["combined"].sum())


def token_texts(tokenizer, input_ids: list[int]) -> list[str]:
    """Each token's own text (spaces and newlines included); byte fragments fall back to the token name."""
    texts = []
    for token_id in input_ids:
        text = tokenizer.decode([int(token_id)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if "\ufffd" in text or text == "":
            # Part of a multi-byte character: the piece alone decodes to U+FFFD, show the raw token instead.
            text = tokenizer.convert_ids_to_tokens(int(token_id))
        texts.append(text)
    return texts


def keep_masks(
    context: np.ndarray, gradient: np.ndarray, ratio: float, alpha: float, beta: float, *, labels=None, select_from: str = "all"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Eq. 5 scores and the keep mask of each selection (context-only, gradient-only, combined),
    chosen from the positions ``select_from`` allows (``labels`` are needed for all but ``all``),
    as training chooses them."""
    from tokenseek.seeking.select import candidate_positions, combined_score, select_keep

    n = len(context)
    pool = candidate_positions(labels, select_from)
    masks = {
        name: select_keep(n, ratio, strategy, context=context, gradient=gradient, alpha=alpha, beta=beta, **pool)
        for name, strategy in SELECTIONS.items()
    }
    return combined_score(context, gradient, alpha, beta), masks


def last_layer_attention(model, input_ids: torch.Tensor) -> np.ndarray:
    """Head-averaged attention probabilities of the last decoder layer, [n, n] (rows: queries)."""
    from tokenseek.models.introspect import unwrap

    base = unwrap(model)
    previous = base.config._attn_implementation
    try:
        if previous != "eager":
            base.set_attn_implementation("eager")
        with torch.no_grad():
            out = base(input_ids=input_ids, output_attentions=True, use_cache=False, logits_to_keep=1)
    except (ValueError, TypeError) as exc:
        raise TokenSeekError(f"could not compute this model's attention map with eager attention ({exc}): use another --model") from None
    finally:
        if previous != "eager":
            base.set_attn_implementation(previous)
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[-1] is None:
        raise TokenSeekError("this model returns no attention weights (output_attentions=True): the attention map needs a model that does")
    return attentions[-1][0].float().mean(dim=0).cpu().numpy()


def compute_example(
    model,
    tokenizer,
    example: dict,
    *,
    position: int,
    ratio: float = DEFAULT_RATIO,
    alpha: float | None = None,
    beta: float | None = None,
    select_from: str = DEFAULT_SELECT_FROM,
    stored: dict | None = None,
    score_source: str = "recomputed",
    layers_back: int = 1,
    grad_mode: str = "abs",
    layers: bool = False,
    model_name: str = "",
) -> ExampleView:
    """Score one example (or take its ``stored`` scores) and compute its maps.

    ``stored`` is a score-store row (``{"context", "gradient"}``); the highlights then use
    those scores, while the attention and gradient maps are always recomputed. ``alpha``/``beta``
    left None take the default for ``select_from``.
    """
    from tokenseek.models.introspect import text_config

    alpha, beta = score_weights(select_from, alpha, beta)
    device = next(model.parameters()).device
    ids = torch.tensor([example["input_ids"]], dtype=torch.long, device=device)
    labels = torch.tensor([example["labels"]], dtype=torch.long, device=device)
    num_layers = text_config(model).num_hidden_layers
    if not 1 <= layers_back <= num_layers:
        raise TokenSeekError(f"--grad-layer {layers_back} needs a model with at least {layers_back} decoder layers; this one has {num_layers}")

    context, gradient, grad_map, layer_gradients, attention = _model_maps(model, ids, labels, layers_back, grad_mode, layers)
    if stored is not None:
        context, gradient = _stored_scores(stored, example)
    combined, masks = keep_masks(context, gradient, ratio, alpha, beta, labels=example["labels"], select_from=select_from)
    return ExampleView(
        position=position,
        record_index=int(example["index"]),
        input_ids=list(example["input_ids"]),
        tokens=token_texts(tokenizer, example["input_ids"]),
        prompt_length=int(example["prompt_length"]),
        labels=list(example["labels"]),
        context=context,
        gradient=gradient,
        combined=combined,
        keep=masks,
        ratio=ratio,
        alpha=alpha,
        beta=beta,
        select_from=select_from,
        layers_back=layers_back,
        grad_mode=grad_mode,
        score_source=score_source,
        model_name=model_name,
        num_layers=num_layers,
        attention=attention,
        grad_map=grad_map,
        layer_gradients=layer_gradients,
    )


def _model_maps(model, ids, labels, layers_back: int, grad_mode: str, layers: bool):
    """The model's own view of one example (numpy, batch dimension dropped): context and
    gradient scores, the per-dimension gradient map, gradient scores of the last three
    layers (with ``layers``) and the last layer's attention."""
    from tokenseek.models.introspect import text_config
    from tokenseek.seeking.seek import score_batch

    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        context, gradient, grad_map = score_batch(model, ids, labels, mask, layers_back=layers_back, grad_mode=grad_mode, return_grad_map=True)
        layer_gradients = {}
        if layers:
            for back in range(1, min(3, text_config(model).num_hidden_layers) + 1):
                if back == layers_back:
                    layer_gradients[back] = gradient[0].cpu().numpy()
                else:
                    _, g = score_batch(model, ids, labels, mask, layers_back=back, grad_mode=grad_mode)
                    layer_gradients[back] = g[0].cpu().numpy()
        attention = last_layer_attention(model, ids)
    finally:
        model.train(was_training)
    return context[0].cpu().numpy(), gradient[0].cpu().numpy(), grad_map[0].cpu().numpy(), layer_gradients, attention


def _stored_scores(stored: dict, example: dict) -> tuple[np.ndarray, np.ndarray]:
    """A score-store row's scores, refused when they belong to differently tokenized data."""
    context = np.asarray(stored["context"], dtype=np.float32)
    gradient = np.asarray(stored["gradient"], dtype=np.float32)
    if len(context) != len(example["input_ids"]):
        raise TokenSeekError(
            f"the stored scores of example {example['index']} cover {len(context)} tokens but it has "
            f"{len(example['input_ids'])}: re-score with the same --data/--template/--max-length"
        )
    return context, gradient
