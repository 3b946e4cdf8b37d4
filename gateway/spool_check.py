"""Check the spool against the database: every recorded instance has its bytes, and nothing else.

Why an operator check: the gateway's promise is that an acknowledged instance's bytes are in
the spool until every delivery is settled. A disk restored from backup, a bucket lifecycle rule
someone added, or hands in the spool folder can break that silently; this finds it (a missing
object is reported with its study, so the sender can be asked again). It also finds the one
kind of leftover a crash can leave: an object renamed or uploaded into place whose database
commit never happened. Such an orphan was never acknowledged, so it is nobody's data; with
`delete_orphans` it is removed once older than `min_age` (a day by default, so an ingest still
between its spool write and its commit, on this or another replica, is never touched).

Memory: the keys of every unpurged instance are held in a set while the spool is listed
(about 100 bytes each: ~100 MB per million instances).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.db import Database
from gateway.db.engine import Row
from gateway.exceptions import SpoolError
from gateway.spool import Spool
from gateway.spool.base import SpoolEntry

DEFAULT_MIN_AGE = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class MissingObject:
    study_instance_uid: str
    sop_instance_uid: str
    spool_key: str


@dataclass(slots=True)
class SpoolCheckReport:
    listed: int = 0
    listed_bytes: int = 0
    recorded: int = 0  # unpurged instances in the database
    missing: list[MissingObject] = field(default_factory=list)
    corrupt: list[tuple[MissingObject, str]] = field(default_factory=list)  # with the reason
    orphans: list[SpoolEntry] = field(default_factory=list)  # unreferenced, older than min_age
    young_unreferenced: int = 0  # unreferenced but recent: perhaps an ingest in flight
    deleted: int = 0
    verified: int = 0

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.corrupt


def check_spool(
    db: Database,
    spool: Spool,
    *,
    min_age: float = DEFAULT_MIN_AGE,
    delete_orphans: bool = False,
    verify: bool = False,
    now: float | None = None,
    on_progress: Callable[[SpoolCheckReport], None] | None = None,
) -> SpoolCheckReport:
    """Compare the spool with the database; see the module docstring."""
    moment = time.time() if now is None else now
    report = SpoolCheckReport()
    with db.transaction(write=False) as cur:
        recorded = {
            str(row["spool_key"])
            for row in cur.execute(
                "SELECT spool_key FROM instances WHERE purged_at IS NULL AND spool_key IS NOT NULL"
            ).fetchall()
        }
        superseded = {
            str(row["spool_key"])
            for row in cur.execute("SELECT spool_key FROM spool_garbage").fetchall()
        }
    report.recorded = len(recorded)
    present: set[str] = set()
    for entry in spool.list_objects():
        report.listed += 1
        report.listed_bytes += entry.size
        if entry.key in recorded:
            present.add(entry.key)
        elif entry.key not in superseded:
            _unreferenced(db, spool, entry, report, moment, min_age, delete_orphans)
        if on_progress is not None and report.listed % 500 == 0:
            on_progress(report)
    absent = [key for key in recorded if key not in present]
    report.missing = _still_missing(db, spool, absent)
    if verify:
        _verify(db, spool, sorted(present), report, on_progress)
    if on_progress is not None:
        on_progress(report)
    return report


def _unreferenced(
    db: Database,
    spool: Spool,
    entry: SpoolEntry,
    report: SpoolCheckReport,
    moment: float,
    min_age: float,
    delete: bool,
) -> None:
    if moment - entry.modified < min_age or _referenced_now(db, entry.key):
        report.young_unreferenced += 1
        return
    report.orphans.append(entry)
    if delete:
        spool.delete(entry.key)
        report.deleted += 1


def _referenced_now(db: Database, key: str) -> bool:
    """Committed since the check began (only an ingest in flight can do that)."""
    with db.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT 1 FROM instances WHERE spool_key = ? UNION ALL "
            "SELECT 1 FROM spool_garbage WHERE spool_key = ?",
            (key, key),
        ).fetchone()
    return row is not None


def _still_missing(db: Database, spool: Spool, keys: list[str]) -> list[MissingObject]:
    """Keys not listed, re-read: retention may have purged them, a replacement moved them."""
    missing = []
    for key in keys:
        row = _unpurged(db, key)
        if row is not None and not spool.exists(key):
            missing.append(_instance(row, key))
    return missing


def _unpurged(db: Database, key: str) -> Row | None:
    """The unpurged instance stored under `key` now (None: purged or replaced meanwhile)."""
    with db.transaction(write=False) as cur:
        row: Row | None = cur.execute(
            "SELECT study_instance_uid, sop_instance_uid, size, sha256 FROM instances "
            "WHERE spool_key = ? AND purged_at IS NULL",
            (key,),
        ).fetchone()
    return row


def _instance(row: Row, key: str) -> MissingObject:
    return MissingObject(str(row["study_instance_uid"]), str(row["sop_instance_uid"]), key)


def _verify(
    db: Database,
    spool: Spool,
    keys: list[str],
    report: SpoolCheckReport,
    on_progress: Callable[[SpoolCheckReport], None] | None,
) -> None:
    for key in keys:
        row = _unpurged(db, key)
        if row is None:
            continue  # purged or replaced meanwhile
        instance = _instance(row, key)
        digest = hashlib.sha256()
        size = 0
        try:
            with spool.open(key) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except SpoolError as exc:
            report.corrupt.append((instance, f"cannot be read: {exc}"))
            continue
        if size != int(row["size"]) or digest.hexdigest() != str(row["sha256"]):
            report.corrupt.append(
                (
                    instance,
                    f"{size} bytes with SHA-256 {digest.hexdigest()[:16]}..., "
                    f"recorded {row['size']} bytes with {str(row['sha256'])[:16]}...",
                )
            )
        report.verified += 1
        if on_progress is not None and report.verified % 100 == 0:
            on_progress(report)
