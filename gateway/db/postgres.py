"""PostgreSQL state store for several gateway replicas sharing one queue.

Same schema, same SQL, same public behaviour as SQLite (`gateway/db/engine.py`); what differs:

* Placeholders: the SQL is written with `?`; `PostgresCursor.statement` turns them into
  psycopg's `%s` (and doubles a literal `%`), skipping quoted text, in this one place.
* Connections: a small bounded pool per process (`pool_size` in the URL query, default 10),
  not one per thread: pynetdicom starts a thread per association, and per-thread connections
  would leak one server connection per association. A connection that broke is dropped; one
  idle for a while is probed before it is lent again, so a database restart costs no request.
* Locking: `for_update()` yields `FOR UPDATE [OF alias] SKIP LOCKED`, which `lease_batch`
  appends to its SELECTs so replicas never lease the same delivery (SQLite serialises writers
  instead).
* Migrations take a transaction-scoped advisory lock, so replicas starting together migrate
  once; DDL is transactional, so a failed migration leaves no half-built schema.

Every psycopg error becomes a StoreError (connection problems name the server, never the
password).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from gateway.db.engine import Cursor, Database
from gateway.exceptions import ConfigError, StoreError

_MIGRATION_LOCK = 0x6469636F6D677701  # "dicomgw" + 1: any fixed bigint unique to this app
_DEFAULT_POOL_SIZE = 10
_ACQUIRE_TIMEOUT = 30.0
_PROBE_AFTER_IDLE = 2.0  # seconds; a connection idle longer is checked before reuse


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """`?` placeholders -> `%s`, literal `%` -> `%%`; text inside quotes is left alone."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
            out.append("%%" if char == "%" else char)
        elif char in ("'", '"'):
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


class PostgresCursor(Cursor):
    errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def statement(self, sql: str) -> str:
        return to_pyformat(sql)

    @property
    def lastrowid(self) -> int:
        raise StoreError("lastrowid is not available on PostgreSQL; use insert_returning_id")


class _Pool:
    """At most `size` connections; idle ones are reused last-in first-out."""

    def __init__(self, connect: Any, size: int) -> None:
        self._connect = connect
        self._size = size
        self._open = 0
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + _ACQUIRE_TIMEOUT
        while True:
            with self._cond:
                while not self._idle and self._open >= self._size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StoreError(
                            f"all {self._size} database connections stayed busy for "
                            f"{_ACQUIRE_TIMEOUT:.0f}s; raise pool_size in storage.database"
                        )
                    self._cond.wait(remaining)
                if self._idle:
                    connection, since = self._idle.pop()
                else:
                    self._open += 1
                    connection, since = None, 0.0
            if connection is None:
                try:
                    return self._connect()  # type: ignore[no-any-return]
                except BaseException:
                    self._forget()
                    raise
            if time.monotonic() - since < _PROBE_AFTER_IDLE or _alive(connection):
                return connection
            self.discard(connection)  # the server restarted or dropped it: take another

    def release(self, connection: psycopg.Connection[Any]) -> None:
        if connection.closed or connection.broken or self._closed:
            self.discard(connection)
            return
        if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                connection.rollback()
            except psycopg.Error:
                self.discard(connection)
                return
        with self._cond:
            self._idle.append((connection, time.monotonic()))
            self._cond.notify()

    def discard(self, connection: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            connection.close()
        self._forget()

    def _forget(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for connection, _since in idle:
            with contextlib.suppress(psycopg.Error):
                connection.close()


def _alive(connection: psycopg.Connection[Any]) -> bool:
    try:
        connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def split_url(url: str) -> tuple[str, int, str]:
    """(libpq URL without our own options, pool size, URL safe to show) for `url`."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"storage.database {_safe(url)!r}: use postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    pool_size = _DEFAULT_POOL_SIZE
    kept = []
    for name, value in query:
        if name == "pool_size":
            if not value.isdigit() or not 1 <= int(value) <= 1000:
                raise ConfigError(
                    f"storage.database: pool_size is {value!r}; give a whole number 1-1000"
                )
            pool_size = int(value)
        else:
            kept.append((name, value))
    libpq = urlunsplit(parts._replace(query=urlencode(kept)))
    return libpq, pool_size, _safe(url)


def _safe(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresDatabase(Database):
    """PostgreSQL state store shared by any number of gateway processes."""

    dialect = "postgresql"
    primary_key = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    cursor_type = PostgresCursor
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self._conninfo, pool_size, self.display_url = split_url(url)
        self._pool = _Pool(self._connect, pool_size)
        self._migrate()

    def for_update(self, of: str | None = None, *, skip_locked: bool = True) -> str:
        return f" FOR UPDATE{f' OF {of}' if of else ''}{' SKIP LOCKED' if skip_locked else ''}"

    def _connect(self) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {"autocommit": True, "application_name": "dicom-gateway"}
        if "connect_timeout" not in self._conninfo:
            options["connect_timeout"] = 10
        try:
            return psycopg.connect(self._conninfo, **options)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL {self.display_url}: {exc}") from exc

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        connection = self._pool.acquire()
        try:
            yield connection
        finally:
            self._pool.release(connection)

    def _begin(self, write: bool) -> str:
        return "BEGIN"

    def _lock_migrations(self, cur: Cursor) -> None:
        cur.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

    def close(self) -> None:
        self._pool.close()
