"""Which stored instances a WADO-RS request names, in a stable order.

Why separate from QIDO: retrieval must tell "never had it" (404) from "had it, but the cached
bytes were purged after delivery" (410), so it returns purged rows too and lets the web layer
decide. Rows come ordered by series (first arrival), instance number, arrival.

C-MOVE and C-GET (gateway/dimse/retrieve.py) retrieve what a C-FIND would find, so
`instances_matching` uses QIDO's matching (`where_clause`) and, like it, skips purged rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.db.engine import Database, Row
from gateway.db.qido import Match, where_clause

_COLUMNS = (
    "id, sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, "
    "transfer_syntax_uid, spool_key, size, purged_at, instance_number, number_of_frames, "
    "rows, received_at"
)


def instances_to_retrieve(
    db: Database,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    *,
    with_header: bool = False,
) -> list[Row]:
    """Rows of the study (optionally one series or one instance), purged ones included."""
    clauses, params = ["study_instance_uid = ?"], [study]
    if series is not None:
        clauses.append("series_instance_uid = ?")
        params.append(series)
    if sop is not None:
        clauses.append("sop_instance_uid = ?")
        params.append(sop)
    columns = _COLUMNS + (", header_json" if with_header else "")
    with db.transaction(write=False) as cur:
        rows = cur.execute(
            f"SELECT {columns} FROM instances WHERE {' AND '.join(clauses)} "
            "ORDER BY series_instance_uid, COALESCE(instance_number, 0), id",
            params,
        ).fetchall()
    first_seen: dict[str, int] = {}
    for row in rows:
        first_seen.setdefault(str(row["series_instance_uid"]), int(row["id"]))
        first_seen[str(row["series_instance_uid"])] = min(
            first_seen[str(row["series_instance_uid"])], int(row["id"])
        )
    rows.sort(key=lambda r: first_seen[str(r["series_instance_uid"])])  # stable: keeps order
    return rows


def instances_matching(db: Database, matches: Sequence[Match]) -> list[Row]:
    """Visible rows matching `matches` (QIDO matching), few columns, in retrieval order.

    Raises InvalidInputError for a value that cannot be matched.
    """
    where, params = where_clause(matches, fuzzy=False, dialect=db.dialect)
    with db.transaction(write=False) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM instances WHERE {where} "
            "ORDER BY study_instance_uid, series_instance_uid, COALESCE(instance_number, 0), id",
            params,
        ).fetchall()
