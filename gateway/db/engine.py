"""Database connections, transactions and migrations: the shared surface and SQLite.

`Database` holds the behaviour every backend shares (transactions that commit or roll back,
migrations, the readiness probe, row-locking clauses); a backend supplies connections and its
dialect. SQL is written once with `?` placeholders; a backend whose driver wants another style
translates it in its `Cursor`.

SQLite runs in WAL mode with `synchronous=FULL`, so a committed transaction survives power loss;
each thread gets its own connection, and write transactions start with `BEGIN IMMEDIATE` so two
writers never deadlock on a lock upgrade (the second waits, up to `busy_timeout`). PostgreSQL
lives in `gateway/db/postgres.py` and is imported only when a `postgresql://` URL asks for it.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tenacity

from gateway.db.schema import MIGRATIONS
from gateway.exceptions import ConfigError, StoreError

Row = dict[str, Any]


class Cursor:
    """A thin cursor over one transaction, returning rows as dicts."""

    errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def statement(self, sql: str) -> str:
        """The driver's form of `sql` (written with `?` placeholders)."""
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            self._raw.execute(self.statement(sql), tuple(params))
        except self.errors as exc:
            raise StoreError(f"database error: {exc}") from exc
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            self._raw.executemany(self.statement(sql), [tuple(row) for row in rows])
        except self.errors as exc:
            raise StoreError(f"database error: {exc}") from exc

    def insert_returning_id(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one `INSERT` and return the new row's `id` (portable `lastrowid`)."""
        rows = self.execute(f"{sql} RETURNING id", params).fetchall()
        if len(rows) != 1:
            raise StoreError("the database did not return the new row's id")
        return int(rows[0]["id"])

    def fetchall(self) -> list[Row]:
        names = [column[0] for column in self._raw.description or ()]
        try:
            rows = self._raw.fetchall()
        except self.errors as exc:
            raise StoreError(f"database error: {exc}") from exc
        return [dict(zip(names, row, strict=True)) for row in rows]

    def fetchone(self) -> Row | None:
        try:
            row = self._raw.fetchone()
        except self.errors as exc:
            raise StoreError(f"database error: {exc}") from exc
        if row is None:
            return None
        names = [column[0] for column in self._raw.description or ()]
        return dict(zip(names, row, strict=True))

    @property
    def lastrowid(self) -> int:
        """SQLite only; portable code uses `insert_returning_id`."""
        if self._raw.lastrowid is None:
            raise StoreError("the database did not return the new row's id")
        return int(self._raw.lastrowid)

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)


class Database(abc.ABC):
    """The state store every module uses; backends supply connections and a dialect.

    A backend implements `_connection()` (a context manager lending a DB-API connection to one
    transaction), `_begin(write)`, `close()`, and sets `dialect`, `primary_key` and `cursor_type`.
    """

    dialect: ClassVar[str] = "abstract"
    primary_key: ClassVar[str] = ""
    cursor_type: ClassVar[type[Cursor]] = Cursor
    # Appended to a single-table SELECT that picks work: lock the rows, skip rows others hold.
    skip_locked: ClassVar[str] = ""

    def for_update(self, of: str | None = None, *, skip_locked: bool = True) -> str:
        """A row-locking clause for the end of a SELECT (after ORDER BY/LIMIT), or ''.

        `of` names the table alias to lock in a join. SQLite needs none: its write
        transactions (`BEGIN IMMEDIATE`) already exclude each other.
        """
        return ""

    @abc.abstractmethod
    def _connection(self) -> contextlib.AbstractContextManager[Any]:
        """Lend a DB-API connection to one transaction."""

    @abc.abstractmethod
    def _begin(self, write: bool) -> str:
        """The statement that starts a read or write transaction."""

    def _lock_migrations(self, cur: Cursor) -> None:  # noqa: B027 - optional hook
        """Serialise migrations between processes starting together (inside the transaction).

        SQLite needs nothing here: `BEGIN IMMEDIATE` already serialises the migration.
        """

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Cursor]:
        """One transaction; commits on success, rolls back on any exception."""
        errors = self.cursor_type.errors
        with self._connection() as connection:
            raw = connection.cursor()
            try:
                try:
                    raw.execute(self._begin(write))
                except errors as exc:
                    raise StoreError(f"cannot start a database transaction: {exc}") from exc
                try:
                    yield self.cursor_type(raw)
                except BaseException:
                    with contextlib.suppress(*errors):
                        raw.execute("ROLLBACK")
                    raise
                try:
                    raw.execute("COMMIT")
                except errors as exc:
                    with contextlib.suppress(*errors):
                        raw.execute("ROLLBACK")
                    raise StoreError(f"cannot commit to the database: {exc}") from exc
            finally:
                with contextlib.suppress(*errors):
                    raw.close()

    def _migrate(self) -> None:
        with self.transaction() as cur:
            self._lock_migrations(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = cur.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            current = int(row["v"]) if row and row["v"] is not None else 0
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                for statement in script.format(pk=self.primary_key).split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    def check(self) -> None:
        """Raise StoreError if the database cannot answer now (readiness probe)."""
        with self.transaction(write=False) as cur:
            cur.execute("SELECT 1").fetchone()

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection this process holds."""


class SqliteDatabase(Database):
    """SQLite state store; one connection per thread, explicit transactions."""

    dialect = "sqlite"
    primary_key = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create database folder {path.parent}: {exc.strerror}"
            ) from exc
        self._local = threading.local()
        # Every connection with the thread that owns it: pynetdicom starts a thread per
        # association, so connections of finished threads are closed, not kept forever.
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._migrate()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = _connect_sqlite(self.path)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open database {self.path}: {exc}") from exc
            self._local.connection = connection
            with self._lock:
                finished = [c for thread, c in self._all if not thread.is_alive()]
                self._all = [(t, c) for t, c in self._all if t.is_alive()]
                self._all.append((threading.current_thread(), connection))
            for stale in finished:
                with contextlib.suppress(sqlite3.Error):
                    stale.close()
        yield connection

    def _begin(self, write: bool) -> str:
        return "BEGIN IMMEDIATE" if write else "BEGIN"

    def close(self) -> None:
        with self._lock:
            for _thread, connection in self._all:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            self._all.clear()
        self._local = threading.local()


@tenacity.retry(
    retry=tenacity.retry_if_exception(lambda exc: "locked" in str(exc)),
    wait=tenacity.wait_random_exponential(multiplier=0.01, max=0.5),
    stop=tenacity.stop_after_delay(30),
    reraise=True,
)
def _connect_sqlite(path: Path) -> sqlite3.Connection:
    """Open a connection in WAL mode with full durability.

    Switching a new database to WAL needs a moment of exclusive access and SQLite answers
    "database is locked" at once, without its busy handler, when several processes or threads
    open the same fresh file together; retrying briefly is the documented remedy.
    """
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def open_database(url: str) -> Database:
    """Open the database named by a `sqlite:///PATH` or `postgresql://...` URL."""
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url[len("sqlite:///") :]))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from gateway.db.postgres import PostgresDatabase
        except ImportError as exc:
            raise ConfigError(
                "storage.database is postgresql:// but the PostgreSQL driver is not installed; "
                "run: pip install 'dicom-gateway[postgres]'"
            ) from exc
        return PostgresDatabase(url)
    raise ConfigError(
        f"storage.database {url!r} is not supported: use sqlite:///PATH or "
        "postgresql://USER@HOST:PORT/DBNAME"
    )
