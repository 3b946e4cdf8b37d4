"""Spool housekeeping: free bytes nobody needs any more, never bytes someone may still send.

An instance's bytes are purged once none of its deliveries is pending, leased or dead (a dead
delivery can still be retried by an operator) and `storage.retention_hours` have passed since
it was received. Superseded versions are deleted after a grace period longer than a lease.
Files left in the staging folder by a crash (a data set cut off mid-receive, a prepared
staging file) are removed once nothing has written to them for a day.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from gateway.db import Database
from gateway.exceptions import SpoolError
from gateway.headers import with_headers
from gateway.spool import Spool

log = logging.getLogger(__name__)

_BATCH = 500


def purge_expired(
    db: Database, spool: Spool, *, retention_hours: float, now: float | None = None
) -> int:
    """Delete spool bytes of settled, expired instances; return how many were purged."""
    moment = time.time() if now is None else now
    cutoff = moment - retention_hours * 3600
    with db.transaction(write=False) as cur:
        rows = cur.execute(
            "SELECT i.id, i.spool_key, i.header_json, i.purged_at FROM instances i "
            "WHERE i.purged_at IS NULL "
            "AND i.received_at <= ? AND NOT EXISTS (SELECT 1 FROM deliveries d "
            "WHERE d.instance_id = i.id AND d.state IN ('pending', 'leased', 'dead')) "
            "ORDER BY i.id LIMIT ?",
            (cutoff, _BATCH),
        ).fetchall()
        garbage = cur.execute(
            "SELECT spool_key FROM spool_garbage WHERE delete_after <= ? LIMIT ?",
            (moment, _BATCH),
        ).fetchall()
    # A header still to be made from the bytes (gateway/headers.py) is made now, or QIDO-RS
    # could only ever answer the indexed attributes of a purged instance.
    with_headers(db, spool, rows)
    for row in rows:
        with db.transaction() as cur:
            # Re-check inside the write transaction: a replacement may have arrived meanwhile.
            updated = cur.execute(
                "UPDATE instances SET purged_at = ? WHERE id = ? AND spool_key = ? "
                "AND purged_at IS NULL",
                (moment, row["id"], row["spool_key"]),
            ).rowcount
        if updated:
            with contextlib.suppress(SpoolError):
                spool.delete(str(row["spool_key"]))
    for row in garbage:
        with contextlib.suppress(SpoolError):
            spool.delete(str(row["spool_key"]))
        with db.transaction() as cur:
            cur.execute("DELETE FROM spool_garbage WHERE spool_key = ?", (row["spool_key"],))
    if rows or garbage:
        log.info(
            "purged %d expired instance(s) and %d superseded object(s)", len(rows), len(garbage)
        )
    return len(rows)


STAGING_LEFTOVER_SECONDS = 24 * 3600.0


def sweep_staging(staging_dir: Path, *, older_than: float = STAGING_LEFTOVER_SECONDS) -> int:
    """Remove staging files nothing has written to for `older_than` seconds; return the count.

    Never acknowledged, so never anyone's data: a receive in progress writes (and an open
    association's prepared file lives at most `dimse.network_timeout`), far below a day.
    """
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(staging_dir))
    except OSError as exc:
        log.warning("cannot list the staging folder %s: %s", staging_dir, exc.strerror)
        return 0
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    if removed:
        log.info("removed %d leftover file(s) from the staging folder %s", removed, staging_dir)
    return removed
