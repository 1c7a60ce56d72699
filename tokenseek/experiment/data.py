"""A study's data, written once under its ``runs_dir``: a seeded sample of a data file, or a
generator's train and test splits (the test split is the held-out data)."""

from __future__ import annotations

from pathlib import Path

from tokenseek.errors import TokenSeekError
from tokenseek.experiment.cells import data_dir, read_json
from tokenseek.experiment.config import Study, short_hash
from tokenseek.utils.io import write_json


def sample_data(study: Study) -> dict:
    """Draw the training and held-out samples (seeded) and write them once; returns their paths."""
    import numpy as np

    from tokenseek.data import load_records

    folder = data_dir(study)
    meta_file = folder / "sample.json"
    meta = read_json(meta_file)
    if "generator" in study.data_spec():
        return generate_data(study, folder, meta)
    if meta and meta.get("spec") == study.data_spec() and (folder / "train.json").is_file():
        return meta
    spec = study.data_spec()
    records = load_records(spec["path"], fields=spec["fields"])
    n_train = spec["sample"] if spec["sample"] is not None else len(records) - spec["heldout"]
    if n_train < 1 or n_train + spec["heldout"] > len(records):
        raise TokenSeekError(
            f"{spec['path']} has {len(records)} usable records, too few for data.sample {spec['sample']} + data.heldout {spec['heldout']}"
        )
    order = np.random.default_rng(spec["seed"]).permutation(len(records)).tolist()
    train_idx, held_idx = order[:n_train], order[n_train : n_train + spec["heldout"]]
    train = [records[i] for i in train_idx]
    held = [records[i] for i in held_idx]
    write_json(folder / "train.json", train)
    if held:
        write_json(folder / "heldout.json", held)
    meta = {
        "spec": spec,
        "source_records": len(records),
        "train_file": str(folder / "train.json"),
        "heldout_file": str(folder / "heldout.json") if held else None,
        "train_records": len(train),
        "heldout_records": len(held),
        "train_indices_sha": short_hash(train_idx),
        "heldout_indices_sha": short_hash(held_idx),
    }
    write_json(meta_file, meta)  # last: its presence means both files are complete
    return meta


def generate_data(study: Study, folder: Path, meta: dict | None) -> dict:
    """Write a generator's train and test splits once (the test split is the held-out data).

    Generating is instant, so it is redone on every start and compared with what the study's
    runs were trained on: a generator whose code changed must not silently mix two datasets.
    """
    from tokenseek.data.generators import generate_splits

    spec = study.data_spec()
    train, test = generate_splits(spec["generator"], spec["train"], spec["test"], spec["seed"])
    shas = {"train_sha": short_hash(train), "heldout_sha": short_hash(test)}
    if meta and meta.get("spec") == spec and (folder / "train.json").is_file():
        if {k: meta.get(k) for k in shas} != shas:
            raise TokenSeekError(
                f"the {spec['generator']} generator now writes other records than the ones in {folder} (its code changed): "
                f"delete {folder} and the study's results to start over, or restore the generator"
            )
        return meta
    write_json(folder / "train.json", train)
    if test:
        write_json(folder / "heldout.json", test)
    meta = {
        "spec": spec,
        "source_records": len(train) + len(test),
        "train_file": str(folder / "train.json"),
        "heldout_file": str(folder / "heldout.json") if test else None,
        "train_records": len(train),
        "heldout_records": len(test),
        **shas,
    }
    write_json(folder / "sample.json", meta)  # last: its presence means both files are complete
    return meta
