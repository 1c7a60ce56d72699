"""Locate ../shared/data (real benchmark and training files kept outside the repo).

Tests that need it call ``shared_data_dir()``: it skips the test with the reason
when the folder is absent, and fails it instead when the environment variable CI
is set (a CI run must not pass by skipping everything).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_data_dir(*parts: str) -> Path:
    """``../shared/data`` (joined with ``parts``), or skip / fail the calling test."""
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    reason = f"needs {path} (the project's shared data folder, ../shared/data relative to the repo root), which is absent"
    if _in_ci():
        pytest.fail(reason + "; under CI it must be present")
    pytest.skip(reason)
