"""The audit trail: one row per significant event (who, what, which study, outcome)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.db.engine import Cursor, Database, Row


def record_event(
    cur: Cursor,
    kind: str,
    *,
    outcome: str,
    actor: str | None = None,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    detail: Mapping[str, Any] | str | None = None,
    at: float | None = None,
) -> None:
    """Append one audit event inside the caller's transaction."""
    text = detail if isinstance(detail, str) or detail is None else json.dumps(detail, default=str)
    cur.execute(
        "INSERT INTO events (at, kind, actor, study_instance_uid, sop_instance_uid, outcome, "
        "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (time.time() if at is None else at, kind, actor, study_uid, sop_uid, outcome, text),
    )


def audit(db: Database, kind: str, **fields: Any) -> None:
    """Append one audit event in its own transaction."""
    with db.transaction() as cur:
        record_event(cur, kind, **fields)


def events_for(
    db: Database,
    *,
    study_uid: str | None = None,
    actor: str | None = None,
    kinds: Sequence[str] = (),
    limit: int = 500,
) -> list[Row]:
    """The newest `limit` events of a study and/or an actor (of `kinds`, if given), oldest
    first."""
    clauses: list[str] = []
    params: list[Any] = []
    if kinds:
        clauses.append(f"kind IN ({', '.join('?' for _ in kinds)})")
        params.extend(kinds)
    if study_uid is not None:
        clauses.append("study_instance_uid = ?")
        params.append(study_uid)
    if actor is not None:
        clauses.append("actor = ?")
        params.append(actor)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with db.transaction(write=False) as cur:
        rows = cur.execute(
            f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        ).fetchall()
    return list(reversed(rows))


_ID_CHUNK = 500  # ids per `IN (...)`: far below SQLite's and PostgreSQL's parameter limits


def expired_summary(db: Database, *, before: float) -> Row:
    """How many events are older than `before`, and the oldest and newest of them."""
    with db.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT COUNT(*) AS count, MIN(at) AS oldest, MAX(at) AS newest FROM events "
            "WHERE at < ?",
            (before,),
        ).fetchone()
    return row or {"count": 0, "oldest": None, "newest": None}


def oldest_events(cur: Cursor, db: Database, *, before: float, limit: int) -> list[Row]:
    """Up to `limit` events older than `before`, oldest first, locked for the caller to move.

    On PostgreSQL rows another replica is moving are skipped; SQLite's write transaction
    already excludes every other writer.
    """
    return cur.execute(
        f"SELECT * FROM events WHERE at < ? ORDER BY at, id LIMIT ?{db.for_update()}",
        (before, limit),
    ).fetchall()


def delete_events(cur: Cursor, ids: Sequence[int]) -> int:
    """Delete the events with these ids (and nothing else); return how many were deleted."""
    deleted = 0
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        deleted += cur.execute(
            f"DELETE FROM events WHERE id IN ({', '.join('?' for _ in chunk)})", chunk
        ).rowcount
    return deleted


def count_present(db: Database, ids: Sequence[int]) -> int:
    """How many of these event ids are still in the database."""
    present = 0
    with db.transaction(write=False) as cur:
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            row = cur.execute(
                f"SELECT COUNT(*) AS n FROM events WHERE id IN ({', '.join('?' for _ in chunk)})",
                chunk,
            ).fetchone()
            present += int(row["n"]) if row else 0
    return present
