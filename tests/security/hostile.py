"""Helpers for hostile-input tests: a fingerprint of everything the gateway stores."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def stored_state(workdir: Path) -> tuple[dict[str, str], list[tuple[object, ...]]]:
    """(spool file -> SHA-256, instance rows): compare before and after an attack."""
    spool = workdir / "spool"
    files = {
        str(path.relative_to(spool)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(spool.rglob("*"))
        if path.is_file() and ".incoming" not in path.parts
    }
    with sqlite3.connect(workdir / "gateway.db") as db:
        rows = list(
            db.execute(
                "SELECT sop_instance_uid, study_instance_uid, sha256, spool_key FROM instances "
                "ORDER BY sop_instance_uid"
            )
        )
    return files, rows


def staging_leftovers(workdir: Path) -> list[Path]:
    """Files left in the spool's staging folder (should be none once a request is over)."""
    return [p for p in (workdir / "spool" / ".incoming").rglob("*") if p.is_file()]
