"""Skip-or-fail policy for tests that need programs installed on the machine.

A developer without Orthanc should still be able to run the rest of the suite, so a missing
program skips the test. CI must never go green by skipping its end-to-end tests, so when the
``CI`` environment variable is set (CI runs with ``CI=true``) the same check fails the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["require_binary", "require_file"]


def require_binary(name: str) -> str:
    """Return the full path of program ``name``; skip the test if absent (fail under ``CI``)."""
    found = shutil.which(name)
    if found is None:
        _missing(f"required program {name!r} is not installed")
    return found


def require_file(path: Path, what: str) -> Path:
    """Like :func:`require_binary` for a file, such as a plugin library."""
    if not Path(path).exists():
        _missing(f"{what} not found at {path}")
    return Path(path)


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: refusing to skip)", pytrace=False)
    pytest.skip(reason)
