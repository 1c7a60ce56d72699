"""Named, seeded data generators a study config can ask for instead of a file
(``data: {generator: shortanswer, train: 2000, test: 500, seed: 0}``)."""

from __future__ import annotations

from tokenseek.errors import TokenSeekError

# name -> "module:function" returning (train records, test records) for (train, test, seed);
# imported on use so listing the names costs nothing.
GENERATORS = {"shortanswer": "tokenseek.data.shortanswer:shortanswer_splits"}


def generate_splits(name: str, train: int, test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The generator's ``(train, test)`` records; every record has instruction, input, output."""
    import importlib

    if name not in GENERATORS:
        raise TokenSeekError(f"unknown data generator {name!r}: choose one of {', '.join(sorted(GENERATORS))}")
    module, function = GENERATORS[name].split(":")
    return getattr(importlib.import_module(module), function)(train=train, test=test, seed=seed)
