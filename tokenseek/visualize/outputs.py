"""Write the visualization outputs all-or-nothing.

Directory outputs are rendered into a hidden temporary sibling of the target and moved
into place only when every file is finished; a failure leaves no trace (nor any parent
directories this call created).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from tokenseek.errors import TokenSeekError
from tokenseek.utils.io import atomic_file, publish

EXAMPLE_FILES = ("tokens.html", "attention.png", "gradient_map.png", "context_score.png", "gradient_score.png", "gradient_layers.png", "example.json")
SUMMARY_FILES = ("summary.json", "summary.md", "positions.png")
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


def _make_parents(path: Path) -> list[Path]:
    """Create the missing ancestors of ``path``; return those created (deepest first)."""
    created = []
    parent = path.parent
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except OSError as exc:
            for made in reversed(created):
                with contextlib.suppress(OSError):
                    made.rmdir()
            raise TokenSeekError(f"cannot create {folder} ({exc.strerror}): choose another --output") from None
        created.append(folder)
    return list(reversed(created))


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_dir(target: str | Path, known: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary directory; on success its files replace those in ``target``.

    Files named in ``known`` that this run did not produce are removed from an existing
    ``target``, so a directory never mixes outputs of two runs.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise TokenSeekError(f"--output {target} is a file: give a directory (it is created if missing)")
    created = _make_parents(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        _remove(created)
        raise TokenSeekError(f"cannot write into {target.parent} ({exc.strerror}): choose another --output") from None
    try:
        yield tmp
        if not target.exists():
            publish(tmp, target)
        else:
            produced = {f.name for f in tmp.iterdir()}
            for name in known:
                if name not in produced:
                    with contextlib.suppress(FileNotFoundError):
                        (target / name).unlink()
            for file in tmp.iterdir():
                os.replace(file, target / file.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; it is renamed to ``target`` on success."""
    target = Path(target)
    if target.is_dir():
        raise TokenSeekError(f"--output {target} is a directory: give the image file to write, e.g. {target / 'loss.png'}")
    created = _make_parents(target)
    try:
        with atomic_file(target) as tmp:
            yield tmp
    except BaseException:
        _remove(created)
        raise
