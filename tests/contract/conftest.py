"""Backend fixtures for the contract suite: every test runs once per spool or database backend.

* ``spool``: filesystem, S3 (SeaweedFS) - the S3 spool is configured only through the standard
  AWS environment variables, exactly as a deployment would configure it.
* ``database``: SQLite, PostgreSQL (a fresh database per test).
* ``backends``: the two deployments that exist, (folder, SQLite) and (S3, PostgreSQL).

``open_database`` (a factory fixture) opens more connections to the test's database, the way a
second replica would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.db import Database, open_database
from gateway.spool import Spool, open_spool
from tests.harness.postgres import PostgresServer
from tests.harness.seaweedfs import SeaweedFS

SPOOLS = [pytest.param("filesystem"), pytest.param("s3", marks=pytest.mark.s3)]
DATABASES = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]
PAIRS = [
    pytest.param(("filesystem", "sqlite"), id="folder+sqlite"),
    pytest.param(
        ("s3", "postgresql"), id="s3+postgresql", marks=[pytest.mark.s3, pytest.mark.postgres]
    ),
]


@dataclass
class Backends:
    spool_url: str
    database_url: str
    seaweedfs: SeaweedFS | None = None

    def spool(self) -> Spool:
        return open_spool(self.spool_url)

    def database(self) -> Database:
        return open_database(self.database_url)


def _spool_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    if kind == "filesystem":
        return f"file://{tmp_path / 'spool'}", None
    server: SeaweedFS = request.getfixturevalue("seaweedfs_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{bucket}/spool", server


def _database_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Backends:
    spool_kind, db_kind = request.param
    spool_url, server = _spool_url(spool_kind, request, tmp_path)
    return Backends(spool_url, _database_url(db_kind, request, tmp_path), server)


@pytest.fixture(params=SPOOLS)
def spool_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backends:
    spool_url, server = _spool_url(request.param, request, tmp_path)
    return Backends(spool_url, f"sqlite:///{tmp_path / 'unused.db'}", server)


@pytest.fixture
def spool(spool_backend: Backends) -> Spool:
    return spool_backend.spool()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _database_url(request.param, request, tmp_path)


@pytest.fixture
def connect(database_url: str) -> Iterator[Callable[[], Database]]:
    """Open (more) connections to the test's database; all are closed afterwards."""
    opened: list[Database] = []

    def factory() -> Database:
        db = open_database(database_url)
        opened.append(db)
        return db

    yield factory
    for db in opened:
        db.close()


@pytest.fixture
def database(connect: Callable[[], Database]) -> Database:
    return connect()
