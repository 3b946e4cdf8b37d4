"""Audit retention: move events older than a cutoff out of the database, in bounded batches.

Each batch is one write transaction: the oldest events before the cutoff are selected (locked,
on PostgreSQL, so replicas never move the same rows), appended to the archive and fsynced
(gateway/audit_archive.py), and only then deleted by id. Nothing newer than the cutoff and no
other table is touched. A batch a crash interrupted is settled first, from the archive's
journal, so every event ends up in the archive exactly once. Each run that moved events leaves
one `audit.archived` event of its own, so the trail says when and by whom it was cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.audit_archive import EventArchive, Journal
from gateway.audit_settings import AuditSettings
from gateway.db import Database
from gateway.db.events import (
    audit,
    count_present,
    delete_events,
    expired_summary,
    oldest_events,
)

log = logging.getLogger(__name__)

DAY = 86400.0
HOUSEKEEPING_BATCHES = 20  # per housekeeping pass, so purging the spool is never held up long


@dataclass(slots=True, kw_only=True)
class ArchiveRun:
    """What one run found and did (the CLI prints it; housekeeping logs and counts it)."""

    cutoff: float
    archived: bool  # False: archive disabled, events were deleted without a copy
    dry_run: bool = False
    expired: int = 0  # events older than the cutoff when the run began
    oldest: float | None = None
    newest: float | None = None
    moved: int = 0
    batches: int = 0
    files: dict[str, int] = field(default_factory=dict)  # lines appended per archive file
    recovered: str | None = None  # how an interrupted batch was settled, if there was one
    complete: bool = False  # nothing older than the cutoff is left

    @property
    def left(self) -> int:
        return max(self.expired - self.moved, 0)


def cutoff_for(days: float, *, now: float | None = None) -> float:
    """Epoch seconds `days` before `now`."""
    return (time.time() if now is None else now) - days * DAY


def archive_expired(
    db: Database,
    archive: EventArchive | None,
    *,
    cutoff: float,
    batch_size: int = 1000,
    max_batches: int | None = None,
    dry_run: bool = False,
    actor: str = "housekeeping",
    on_batch: Callable[[ArchiveRun], None] | None = None,
    before_delete: Callable[[], None] | None = None,
) -> ArchiveRun:
    """Move events older than `cutoff` to `archive` (None: delete them without a copy).

    `before_delete` runs after a batch is durable in the archive and before its rows are
    deleted: the point a crash is worst, which the tests use to crash there for real.
    """
    run = ArchiveRun(cutoff=cutoff, archived=archive is not None, dry_run=dry_run)
    summary = expired_summary(db, before=cutoff)
    run.expired = int(summary["count"] or 0)
    run.oldest = None if summary["oldest"] is None else float(summary["oldest"])
    run.newest = None if summary["newest"] is None else float(summary["newest"])
    if dry_run:
        run.complete = run.expired == 0
        return run
    if archive is None:
        _move(db, None, run, batch_size, max_batches, on_batch, before_delete)
    else:
        with archive.open():
            journal = archive.pending()
            if journal is not None:
                run.recovered = _settle_interrupted(db, archive, journal)
            _move(db, archive, run, batch_size, max_batches, on_batch, before_delete)
    if run.moved:
        audit(
            db,
            "audit.archived",
            outcome="archived" if run.archived else "deleted",
            actor=actor,
            detail={
                "events": run.moved,
                "before": _iso(cutoff),
                "files": sorted(run.files),
                "folder": str(archive.folder) if archive is not None else None,
            },
        )
    return run


def prune_audit(db: Database, settings: AuditSettings, *, now: float | None = None) -> ArchiveRun:
    """One housekeeping pass of `audit.retention_days` (a bounded number of batches)."""
    assert settings.retention_days is not None
    return archive_expired(
        db,
        archive_of(settings),
        cutoff=cutoff_for(settings.retention_days, now=now),
        batch_size=settings.batch_size,
        max_batches=HOUSEKEEPING_BATCHES,
    )


def archive_of(settings: AuditSettings) -> EventArchive | None:
    """The configured archive, or None when `audit.archive` is false."""
    if not settings.archive or settings.archive_dir is None:
        return None
    return EventArchive(settings.archive_dir, period=settings.archive_period)


def _move(
    db: Database,
    archive: EventArchive | None,
    run: ArchiveRun,
    batch_size: int,
    max_batches: int | None,
    on_batch: Callable[[ArchiveRun], None] | None,
    before_delete: Callable[[], None] | None,
) -> None:
    while max_batches is None or run.batches < max_batches:
        with db.transaction() as cur:
            rows = oldest_events(cur, db, before=run.cutoff, limit=batch_size)
            if not rows:
                run.complete = True
                return
            written = archive.append(rows) if archive is not None else {}
            if before_delete is not None:
                before_delete()
            deleted = delete_events(cur, [int(row["id"]) for row in rows])
        if archive is not None:
            archive.settled()
        run.moved += deleted
        run.batches += 1
        for name, lines in written.items():
            run.files[name] = run.files.get(name, 0) + lines
        log.info(
            "audit retention: %s %d event(s) ids %d..%d from %s to %s%s",
            "archived" if archive is not None else "deleted (no archive)",
            deleted,
            min(int(row["id"]) for row in rows),
            max(int(row["id"]) for row in rows),
            _iso(float(rows[0]["at"])),
            _iso(float(rows[-1]["at"])),
            f" into {', '.join(sorted(written))}" if written else "",
        )
        if on_batch is not None:
            on_batch(run)
    run.complete = expired_summary(db, before=run.cutoff)["count"] == 0


def _settle_interrupted(db: Database, archive: EventArchive, journal: Journal) -> str:
    """Finish what a crash interrupted, from the journal (see gateway/audit_archive.py)."""
    present = count_present(db, journal.ids)
    if present == len(journal.ids):
        archive.roll_back(journal)
        outcome = (
            f"an interrupted batch of {len(journal.ids)} event(s) had not been deleted; "
            "its lines were removed from the archive and are written again now"
        )
    elif present == 0:
        archive.settled()
        outcome = (
            f"an interrupted batch of {len(journal.ids)} event(s) was already archived "
            "and deleted; nothing to redo"
        )
    else:
        # Only this module deletes events, one whole batch per transaction: this should not
        # happen. Keeping the lines can at worst duplicate an event; removing them could lose one.
        archive.settled()
        outcome = (
            f"an interrupted batch of {len(journal.ids)} event(s) is only partly in the "
            f"database ({present} left); its lines were kept, so up to {present} event(s) "
            "may appear twice in the archive"
        )
    log.warning("audit retention: %s", outcome)
    return outcome


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
