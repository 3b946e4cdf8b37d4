"""Database connections, transactions and migrations for SQLite (and, later, PostgreSQL).

SQLite runs in WAL mode with `synchronous=FULL`, so a committed transaction survives power loss;
each thread gets its own connection, and write transactions start with `BEGIN IMMEDIATE` so two
writers never deadlock on a lock upgrade (the second waits, up to `busy_timeout`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.db.schema import MIGRATIONS
from gateway.exceptions import ConfigError, StoreError

Row = dict[str, Any]


class Cursor:
    """A thin cursor over one transaction, returning rows as dicts."""

    def __init__(self, raw: sqlite3.Cursor) -> None:
        self._raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            self._raw.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._raw.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    def fetchall(self) -> list[Row]:
        names = [column[0] for column in self._raw.description or ()]
        return [dict(zip(names, row, strict=True)) for row in self._raw.fetchall()]

    def fetchone(self) -> Row | None:
        row = self._raw.fetchone()
        if row is None:
            return None
        names = [column[0] for column in self._raw.description or ()]
        return dict(zip(names, row, strict=True))

    @property
    def lastrowid(self) -> int:
        if self._raw.lastrowid is None:
            raise StoreError("the database did not return the new row's id")
        return self._raw.lastrowid

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount


class Database:
    """SQLite state store; one connection per thread, explicit transactions."""

    dialect = "sqlite"
    skip_locked = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create database folder {path.parent}: {exc.strerror}"
            ) from exc
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open database {self.path}: {exc}") from exc
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Cursor]:
        """One transaction; commits on success, rolls back on any exception."""
        connection = self._connection()
        raw = connection.cursor()
        try:
            raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a database transaction: {exc}") from exc
        try:
            yield Cursor(raw)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                raw.execute("ROLLBACK")
            raise
        try:
            raw.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                raw.execute("ROLLBACK")
            raise StoreError(f"cannot commit to the database: {exc}") from exc
        finally:
            raw.close()

    def _migrate(self) -> None:
        with self.transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = cur.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            current = int(row["v"]) if row and row["v"] is not None else 0
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                for statement in script.format(pk="INTEGER PRIMARY KEY AUTOINCREMENT").split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    def check(self) -> None:
        """Raise StoreError if the database cannot answer now (readiness probe)."""
        with self.transaction(write=False) as cur:
            cur.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            self._all.clear()
        self._local = threading.local()


def open_database(url: str) -> Database:
    """Open the database named by a `sqlite:///PATH` URL."""
    if url.startswith("sqlite:///"):
        return Database(Path(url[len("sqlite:///") :]))
    raise ConfigError(f"storage.database {url!r} is not supported yet: use sqlite:///PATH")
