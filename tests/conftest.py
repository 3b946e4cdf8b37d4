"""Shared fixtures: real peers (Orthanc, storescp) on free loopback ports, torn down per test.

Tests import the harness as ``tests.harness``; the repository root is put on ``sys.path`` here so
that works (and ``gateway`` imports) however pytest was launched.

A test that needs an external program calls ``require_binary`` (re-exported here from
:mod:`tests.harness.env`; the fixtures below call it for theirs): a missing program skips the
test on a developer machine but *fails* it when ``CI`` is set, so CI can never go green by
silently skipping its end-to-end tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness.backend_fixtures import postgres_server, s3_bucket, seaweedfs_server  # noqa: E402, F401
from tests.harness.env import require_binary, require_file  # noqa: E402
from tests.harness.orthanc import ORTHANC_BINARY, ORTHANC_DICOMWEB_PLUGIN, OrthancServer  # noqa: E402
from tests.harness.storescp import StoreSCP  # noqa: E402

__all__ = ["require_binary", "require_file"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A per-test scratch directory (``tmp_path/work``), created."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A started Orthanc with DICOMweb, storage under ``tmp_path/orthanc``.

    Torn down with SIGKILL: a graceful Orthanc stop costs 3-5 s per test and the storage is
    thrown away anyway. Tests that care about a clean shutdown call ``orthanc.stop()`` themselves.
    """
    require_binary(str(ORTHANC_BINARY))
    require_file(ORTHANC_DICOMWEB_PLUGIN, "Orthanc DICOMweb plugin")
    server = OrthancServer(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A started DCMTK storescp (AE ``STORESCP``) writing to ``tmp_path/storescp/received``."""
    require_binary("storescp")
    scp = StoreSCP(tmp_path / "storescp" / "received")
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()
