"""Persisted token scores: ``tokenseek score`` writes them once, training re-selects from them.

Layout of a store directory::

    meta.json             what was scored (fingerprint of model, tokenizer, template,
                          max-length and data), how (layer, gradient mode) and in which
                          precision (dtype, quantization)
    shards/b000012.parquet  one file per scored batch, written atomically (resume unit)
    scores.parquet        all examples (written when scoring completes; shards removed)

Columns: ``index`` (record index), ``context`` and ``gradient`` (per-token float32),
``keep`` (kept positions at the scoring-time ratio/alpha/beta, for reference).
Changing ratio, alpha or beta later needs no re-scoring: selection reads the scores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import logging
from pathlib import Path

import numpy as np
import torch

from tokenseek.errors import TokenSeekError
from tokenseek.seeking.config import ScoreConfig
from tokenseek.seeking.select import DEFAULT_RATIO, score_weights
from tokenseek.utils.io import atomic_file, write_json

STORE_VERSION = 1
logger = logging.getLogger(__name__)

# Stores written before the precision was recorded were all scored in float32.
LEGACY_PRECISION = {"dtype": "fp32"}


def _config_sha(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config_shas(base) -> tuple[str, str]:
    """(this version's config hash, the hash stores written before precision was recorded used).

    Precision (dtype, quantization) is recorded separately (:func:`model_precision`), so
    the hash leaves it out: a store scored in fp32 is recognised as this model's when
    the same weights are loaded in bf16 or as NF4.
    """
    config = base.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    legacy = _config_sha(config)
    config.pop("quantization_config", None)
    return _config_sha(config), legacy


def model_fingerprint(model, model_id: str | None = None) -> dict:
    """What identifies the scoring model: its config and a sample of its weights, not where it was loaded from.

    ``source`` is only shown in messages: the same weights loaded from another path (a copy,
    the GGUF cache, a Hub snapshot) are the same model.
    """
    from tokenseek.models.introspect import unwrap

    base = unwrap(model)
    # A few weight values tell a fine-tuned copy from its base even when ids/configs match.
    probe = float(base.get_input_embeddings().weight.detach().float()[:4].sum())
    return {
        "source": str(model_id) if model_id else "default",
        "config_sha": _config_shas(base)[0],
        "weights_probe": round(probe, 4),
        "weights_sample": _weights_sample(base),
    }


def model_precision(model) -> dict:
    """The precision scores are computed in: the weights' dtype, or NF4's compute dtype."""
    from tokenseek.models.introspect import unwrap
    from tokenseek.models.placement import dtype_name, parse_dtype

    base = unwrap(model)
    quant = base.config.to_dict().get("quantization_config") or None
    if quant:
        compute = parse_dtype(quant.get("bnb_4bit_compute_dtype"))
        kind = quant.get("bnb_4bit_quant_type") if quant.get("load_in_4bit") else None
        return {"dtype": dtype_name(compute), "quantization": f"{quant.get('quant_method', 'quantized')} {kind or ''}".strip()}
    return {"dtype": dtype_name(base.get_input_embeddings().weight.dtype), "quantization": None}


def spaced_indices(length: int, count: int) -> torch.Tensor:
    """``min(count, length)`` evenly spaced indices into ``range(length)``, first and last included.

    Integer arithmetic: a float ``linspace`` rounds the last index of a tensor with more than
    2**24 elements (an embedding matrix) past its end.
    """
    count = min(count, length)
    return torch.arange(count, dtype=torch.int64) * (length - 1) // max(count - 1, 1)


def _weights_sample(model) -> str:
    """Hash of every tensor's name, shape and 64 evenly spaced values: milliseconds, and any
    fine-tuned layer changes it (hashing all weights would read the whole model)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            picked = flat[spaced_indices(flat.numel(), 64)]
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(picked.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


# Fingerprint keys compared between a store and a model; stores written before weights_sample
# existed are compared on the keys they have (their "model" key was the path, never compared now).
_MODEL_KEYS = ("config_sha", "weights_probe", "weights_sample")


def model_source(fingerprint: dict) -> str:
    return fingerprint.get("source") or fingerprint.get("model") or "unknown"


def check_version(path: Path, meta: dict) -> None:
    if meta.get("version") != STORE_VERSION:
        raise TokenSeekError(
            f"the score store {path} has format version {meta.get('version')}, but this tokenseek reads version {STORE_VERSION}: "
            "re-score into a new directory with `tokenseek score`"
        )
def same_model(recorded: dict, model, recorded_precision: dict | None = None) -> bool:
    """Whether a store's recorded model fingerprint is ``model``'s, wherever it was loaded from and
    whatever dtype either was loaded in.

    The config (precision left out) must match; the weight probe is compared to within the
    rounding of the coarser of the two dtypes; the weight sample, which is exact, only when
    both were loaded in the same precision. Stores written before a key existed are compared
    on the keys they have.
    """
    from tokenseek.models.introspect import unwrap
    from tokenseek.models.placement import parse_dtype

    base = unwrap(model)
    if recorded.get("config_sha") not in _config_shas(base):
        return False
    weight = base.get_input_embeddings().weight.detach()[:4]
    recorded_precision = recorded_precision or LEGACY_PRECISION
    if "weights_probe" in recorded:
        eps = max(
            torch.finfo(weight.dtype if weight.dtype.is_floating_point else torch.float32).eps,
            torch.finfo(parse_dtype(recorded_precision.get("dtype", "fp32"))).eps,
        )
        tolerance = 1e-4 + float(weight.float().abs().sum()) * eps
        if abs(float(weight.float().sum()) - float(recorded["weights_probe"])) > tolerance:
            return False
    if "weights_sample" in recorded and recorded_precision == {**LEGACY_PRECISION, **model_precision(model)}:
        return recorded["weights_sample"] == _weights_sample(base)
    return True




class ScoreStore:
    """Read access to a completed store, keyed by record index."""

    def __init__(self, path: Path, meta: dict, rows: dict[int, dict]):
        self.path, self.meta, self.rows = path, meta, rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int) -> dict:
        if index not in self.rows:
            raise TokenSeekError(f"the score store {self.path} has no scores for example {index}: re-run `tokenseek score` on this data")
        return self.rows[index]

    @classmethod
    def open(cls, path: str | Path, *, data=None, model=None, model_id: str | None = None) -> "ScoreStore":
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise TokenSeekError(f"{path} is not a score store (no meta.json): create one with `tokenseek score --out {path}`")
        meta = json.loads(meta_file.read_text())
        check_version(path, meta)
        if not meta.get("complete"):
            raise TokenSeekError(f"the score store {path} is incomplete: rerun the same `tokenseek score` command to finish it")
        if data is not None and meta["data"]["fingerprint"] != data.fingerprint():
            raise TokenSeekError(
                f"the score store {path} was made for other data or settings ({_describe(meta['data'])}); "
                "re-score with the same --data/--template/--max-length, or drop --scores"
            )
        store = cls(path, meta, _read_rows([path / "scores.parquet"]))
        if model is not None:
            store.check_model(model, model_id)
        return store

    def check_model(self, model, model_id: str | None = None) -> None:
        """Refuse a model other than the one that made the scores (same weights from any path are fine)."""
        if not same_model(self.meta["model"], model, self.meta.get("precision")):
            raise TokenSeekError(
                f"the score store {self.path} was made with another model ({model_source(self.meta['model'])}): re-score with this model"
            )
        scored, now = self.precision, model_precision(model)
        if scored.get("dtype") != now["dtype"]:
            # Scores rank tokens; another precision moves them by rounding only, so they
            # are used, but said (re-score with --dtype to match exactly).
            logger.warning("the score store %s was scored in %s; the model is now %s", self.path, scored.get("dtype"), now["dtype"])

    @property
    def has_gradient(self) -> bool:
        """False for a store of context scores only (its gradient column is zeros)."""
        return self.meta.get("scoring", {}).get("gradient", True)

    def require_gradient(self, reader: str) -> None:
        """Refuse a context-only store to a ``reader`` that reads the gradient score."""
        if not self.has_gradient:
            raise TokenSeekError(
                f"the score store {self.path} holds context scores only (it was made for a selection that never reads the "
                f"gradient score), but {reader} reads it: re-score with `tokenseek score --out NEW_DIR` and pass --scores NEW_DIR"
            )

    @property
    def precision(self) -> dict:
        """The dtype (and quantization) the scores were computed in."""
        return self.meta.get("precision", LEGACY_PRECISION)


def _describe(data_meta: dict) -> str:
    settings = data_meta.get("settings", {})
    return f"{data_meta.get('examples')} examples, template {settings.get('template')}, max-length {settings.get('max_length')}"


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "index": pa.array([r["index"] for r in rows], pa.int64()),
            "context": pa.array([np.asarray(r["context"], np.float32) for r in rows], pa.list_(pa.float32())),
            "gradient": pa.array([np.asarray(r["gradient"], np.float32) for r in rows], pa.list_(pa.float32())),
            "keep": pa.array([np.flatnonzero(r["keep"]).astype(np.int32) for r in rows], pa.list_(pa.int32())),
        }
    )
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def _read_rows(files) -> dict[int, dict]:
    import pyarrow.parquet as pq

    rows = {}
    for file in files:
        table = pq.read_table(file).to_pydict()
        for i, index in enumerate(table["index"]):
            rows[index] = {
                "context": np.asarray(table["context"][i], np.float32),
                "gradient": np.asarray(table["gradient"][i], np.float32),
                "keep": np.asarray(table["keep"][i], np.int64),
            }
    return rows


def score_dataset(
    model,
    tokenizer,
    data,
    out: str | Path,
    *,
    model_id: str | None = None,
    batch_size: int = ScoreConfig.batch_size,
    layers_back: int = ScoreConfig.grad_layer,
    grad_mode: str = ScoreConfig.grad_mode,
    ratio: float = DEFAULT_RATIO,
    alpha: float | None = None,
    beta: float | None = None,
    seed: int = ScoreConfig.seed,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    with_gradient: bool = True,
) -> ScoreStore:
    """Score every example of ``data`` into the store at ``out``, resuming a partial store.

    Batches are fixed slices of the example list, so a resumed run scores exactly the
    batches that have no shard yet. With ``world_size > 1`` each rank scores every
    ``world_size``-th batch; rank 0 merges once all shards exist. ``with_gradient=False``
    stores context scores only (no partial backward): enough for selections that never read
    the gradient score (:func:`tokenseek.seeking.select.reads_gradient`), refused by the others.
    """
    out = Path(out)
    alpha, beta = score_weights("all", alpha, beta)  # the stored reference keep ranks every position
    if not with_gradient:
        beta = 0.0
    meta = {
        "version": STORE_VERSION,
        "model": model_fingerprint(model, model_id),
        "precision": model_precision(model),
        "data": {"fingerprint": data.fingerprint(), "examples": len(data), "settings": data.settings},
        # "gradient" only when False: stores from before the option compare equal and resume.
        "scoring": {"layers_back": layers_back, "grad_mode": grad_mode, "batch_size": batch_size, **({} if with_gradient else {"gradient": False})},
        "selection": {"ratio": ratio, "alpha": alpha, "beta": beta, "seed": seed},
        "complete": False,
    }
    distributed = world_size > 1 and torch.distributed.is_initialized()
    # Every rank looks at the directory before rank 0 writes into it (a rank looking later
    # would see rank 0's temporary files and take the folder for something else).
    if _existing_store_is_complete(out, meta, model):
        return ScoreStore.open(out, data=data, model=model, model_id=model_id)
    if distributed:
        torch.distributed.barrier()
    if rank == 0:
        write_json(out / "meta.json", meta)

    _score_shards(model, tokenizer, data, out, meta, rank=rank, world_size=world_size, progress=progress)

    if distributed:
        torch.distributed.barrier()  # every shard is written
    if rank == 0:
        _merge_shards(out, meta)
    if distributed:
        torch.distributed.barrier()  # the merged store is complete: only now may other ranks read it
    return ScoreStore.open(out, data=data, model=model, model_id=model_id)


def _existing_store_is_complete(out: Path, meta: dict, model) -> bool:
    """True when ``out`` holds a complete store. Otherwise refuses an unfinished store started
    with another model, precision, data or scoring setting (it could not be resumed), and a
    non-empty directory that is not a store."""
    if (out / "meta.json").is_file():
        previous = json.loads((out / "meta.json").read_text())
        if previous.get("complete"):
            return True
        check_version(out, previous)
        same = (
            same_model(previous.get("model", {}), model, previous.get("precision"))
            and previous.get("precision", LEGACY_PRECISION) == meta["precision"]
            and all(previous.get(k) == meta[k] for k in ("data", "scoring"))
        )
        if not same:
            raise TokenSeekError(
                f"{out} holds an unfinished store for another model, precision, data or scoring setting: "
                "rerun with the settings it was started with, choose another --out, or delete it"
            )
    elif out.exists() and any(out.iterdir()):
        raise TokenSeekError(f"--out {out} exists and is not a score store: choose another directory")
    return False


def _shard_path(out: Path, batch: int) -> Path:
    return out / "shards" / f"b{batch:06d}.parquet"


def _score_shards(model, tokenizer, data, out: Path, meta: dict, *, rank: int, world_size: int, progress: bool) -> None:
    """Score this rank's batches that have no shard yet (settings from the store's ``meta``),
    one parquet shard per batch."""
    from tqdm.auto import tqdm

    from tokenseek.data.collate import DitchingCollator
    from tokenseek.seeking.seek import score_batch
    from tokenseek.seeking.select import select_keep

    scoring, selection = meta["scoring"], meta["selection"]
    batch_size = scoring["batch_size"]
    collate = DitchingCollator(tokenizer.pad_token_id)
    batches = [data.examples[i : i + batch_size] for i in range(0, len(data.examples), batch_size)]
    todo = [b for b in range(rank, len(batches), world_size) if not _shard_path(out, b).is_file()]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for b in tqdm(todo, desc="scoring", unit="batch", disable=not progress or rank != 0):
            batch = collate(batches[b])
            context, gradient = score_batch(
                model,
                batch["input_ids"].to(device),
                batch["labels"].to(device),
                batch["attention_mask"].to(device),
                layers_back=scoring["layers_back"],
                grad_mode=scoring["grad_mode"],
                with_gradient=scoring.get("gradient", True),
            )
            rows = []
            for j, ex in enumerate(batches[b]):
                n = len(ex["input_ids"])
                ctx, grad = context[j, :n].cpu().numpy(), gradient[j, :n].cpu().numpy()
                if not (np.isfinite(ctx).all() and np.isfinite(grad).all()):
                    raise TokenSeekError(f"example {ex['index']} got NaN/inf scores (model weights or inputs overflow): check the model in float32")
                keep = select_keep(n, selection["ratio"], "tokenseek", context=ctx, gradient=grad, alpha=selection["alpha"],
                                   beta=selection["beta"], seed=selection["seed"], index=ex["index"])
                rows.append({"index": ex["index"], "context": ctx, "gradient": grad, "keep": keep})
            _write_parquet(_shard_path(out, b), rows)
    finally:
        model.train(was_training)


def _merge_shards(out: Path, meta: dict) -> None:
    """One ``scores.parquet`` in example order from every shard, then mark the store complete."""
    shards = sorted((out / "shards").glob("b*.parquet"))
    rows = _read_rows(shards)
    merged = [
        {"index": i, "context": r["context"], "gradient": r["gradient"], "keep": _mask(r["keep"], len(r["context"]))}
        for i, r in sorted(rows.items())
    ]
    _write_parquet(out / "scores.parquet", merged)
    write_json(out / "meta.json", {**meta, "complete": True})
    # The whole folder: a writer killed mid-shard (SIGKILL skips its cleanup) leaves a
    # hidden temporary file there that no glob of finished shards matches.
    shutil.rmtree(out / "shards")


def _mask(positions: np.ndarray, length: int) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    mask[positions] = True
    return mask
