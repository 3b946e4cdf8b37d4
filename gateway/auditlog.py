"""Reading the audit trail back for operators: `dicom-gateway audit --study UID | --actor NAME`.

The trail itself is written where things happen: HTTP requests (gateway/web/audit.py), DIMSE
associations (gateway/dimse/audit.py and handlers.py), instances received or refused
(ingest), deliveries dead-lettered or re-queued (db/deliveries.py).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from gateway.db import Database
from gateway.db.engine import Row
from gateway.db.events import events_for
from gateway.exceptions import GatewayError


def recent_events(
    db: Database, *, study_uid: str | None = None, actor: str | None = None, limit: int = 200
) -> list[Row]:
    """The newest `limit` events of a study and/or an actor, oldest first."""
    if study_uid is None and actor is None:
        raise GatewayError("give --study UID or --actor NAME (or both)")
    return events_for(db, study_uid=study_uid, actor=actor, limit=limit)


def events_json(rows: list[Row]) -> str:
    """Events as a JSON array, `detail` decoded."""
    return json.dumps([_decoded(row) for row in rows], indent=2, default=str)


def format_events(rows: list[Row]) -> str:
    """One line per event: time, kind, outcome, actor, study, then the detail."""
    if not rows:
        return "no audit events found"
    lines = []
    for row in rows:
        when = datetime.fromtimestamp(float(row["at"]), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        detail = _decoded(row)["detail"]
        if isinstance(detail, dict):
            text = " ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, "", []))
        else:
            text = str(detail or "")
        study = row["study_instance_uid"] or "-"
        lines.append(
            f"{when} {row['kind']:<22} {row['outcome']:<12} {row['actor'] or '-':<20} "
            f"{study} {text}".rstrip()
        )
    return "\n".join(lines)


def _decoded(row: Row) -> dict[str, Any]:
    item = dict(row)
    detail = item.get("detail")
    if isinstance(detail, str) and detail.startswith("{"):
        with contextlib.suppress(ValueError):
            item["detail"] = json.loads(detail)
    return item
