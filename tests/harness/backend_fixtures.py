"""Session fixtures for the scale-out backends: one SeaweedFS and one PostgreSQL per test run.

Both servers are slow to start compared with a test (seconds), so each starts once per session
and every test gets its own bucket or database. A missing server program skips the tests that
need it on a developer machine and fails them under ``CI`` (see :mod:`.env`). Imported by
``tests/conftest.py`` so contract and end-to-end tests share the same servers.
"""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from .env import require_binary, require_file
from .postgres import SUPERUSER, PostgresServer, postgres_bindir
from .seaweedfs import SeaweedFS, weed_binary

__all__ = ["postgres_server", "s3_bucket", "seaweedfs_server"]


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS (``weed mini``) with an S3 endpoint on 127.0.0.1."""
    require_binary(weed_binary())
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL cluster on 127.0.0.1."""
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server programs (initdb, pg_ctl) are not installed")
    require_file(bindir / "pg_ctl", "PostgreSQL pg_ctl")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            _unavailable(f"running as root but there is no {SUPERUSER!r} user to run initdb")
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _unavailable(reason: str) -> NoReturn:
    # The policy of .env.require_binary, for a need that is not one program.
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: refusing to skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def s3_bucket(seaweedfs_server: SeaweedFS) -> str:
    """A new, empty bucket on the session's SeaweedFS."""
    return seaweedfs_server.create_bucket(f"gw-{uuid.uuid4().hex[:20]}")
