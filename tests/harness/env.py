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

__all__ = ["native_program", "require_binary", "require_file"]


def native_program(name: str) -> str | None:
    """The first ``name`` on ``PATH`` that is not a Python console script, or None.

    pynetdicom installs its own ``storescu``, ``storescp``, ``echoscu``, ``findscu``, ...
    into the virtualenv's ``bin``; with the virtualenv activated they come first on ``PATH``
    and would stand in for DCMTK with other options. The harness wants the independent peer.
    """
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        found = shutil.which(name, path=folder or os.curdir)
        if found is not None and not _is_python_script(Path(found)):
            return found
    return None


def require_binary(name: str) -> str:
    """Return the full path of program ``name``; skip the test if absent (fail under ``CI``).

    Python console scripts of the same name (pynetdicom's apps) do not count.
    """
    found = native_program(name)
    if found is None:
        _missing(f"required program {name!r} is not installed")
    return found


def _is_python_script(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            first_line = handle.readline(256)
    except OSError:
        return False
    return first_line.startswith(b"#!") and b"python" in first_line


def require_file(path: Path, what: str) -> Path:
    """Like :func:`require_binary` for a file, such as a plugin library."""
    if not Path(path).exists():
        _missing(f"{what} not found at {path}")
    return Path(path)


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: refusing to skip)", pytrace=False)
    pytest.skip(reason)
