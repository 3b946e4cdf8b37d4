"""Recent studies with where their copies stand, for the command center's overview.

One query groups deliveries by study and destination, so the dashboard can say at a glance
"12 delivered to cloud, 3 waiting for pacs" without reading per-instance rows.
"""

from __future__ import annotations

from typing import Any

from gateway.db import Database


def recent_studies(db: Database, *, limit: int = 50) -> list[dict[str, Any]]:
    """The most recently received studies, newest first, with delivery counts by state."""
    with db.transaction(write=False) as cur:
        studies = cur.execute(
            "SELECT study_instance_uid, MIN(received_at) AS first_received, "
            "MAX(received_at) AS last_received, COUNT(*) AS instances, "
            "MAX(modality) AS modality, MAX(calling_ae) AS calling_ae, "
            "MAX(source) AS source FROM instances GROUP BY study_instance_uid "
            "ORDER BY MAX(received_at) DESC LIMIT ?",
            (limit,),
        ).fetchall()
        if not studies:
            return []
        marks = ", ".join("?" for _ in studies)
        counts = cur.execute(
            "SELECT study_instance_uid, destination, state, COUNT(*) AS count FROM deliveries "
            f"WHERE study_instance_uid IN ({marks}) "
            "GROUP BY study_instance_uid, destination, state",
            tuple(row["study_instance_uid"] for row in studies),
        ).fetchall()
    by_study: dict[str, dict[str, dict[str, int]]] = {}
    for row in counts:
        states = by_study.setdefault(row["study_instance_uid"], {}).setdefault(
            row["destination"], {}
        )
        states[row["state"]] = int(row["count"])
    result = []
    for row in studies:
        destinations = by_study.get(row["study_instance_uid"], {})
        result.append({**row, "destinations": destinations, "status": _status(destinations)})
    return result


def _status(destinations: dict[str, dict[str, int]]) -> str:
    """One word for the whole study: held, complete, in progress or attention (dead letters)."""
    if not destinations:
        return "held"
    states = {state for counts in destinations.values() for state in counts}
    if "dead" in states:
        return "attention"
    if states & {"pending", "leased"}:
        return "in progress"
    return "complete"
