"""`dicom-gateway commitments`: recent storage commitment transactions for operators.

Reads the `commitments` table the N-ACTION service and the reporter write, so what it shows is
what the modality was (or will be) told: per transaction its state, counts, attempts, the last
outcome and, with `--json`, each failed instance with its Failure Reason. `by_instance` gives
the same answer per instance, for `trace STUDY_UID`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gateway.db.commitments import CommitmentResult, commitments_naming
from gateway.db.engine import Database, Row
from gateway.telemetry import trace_id_of

_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class/instance conflict",
}


def commitments_json(rows: list[Row]) -> str:
    """Transactions as a JSON array; `result` decoded into committed and failed instances."""
    return json.dumps([_decoded(row) for row in rows], indent=2, default=str)


def format_commitments(rows: list[Row]) -> str:
    """One line per transaction, newest first."""
    if not rows:
        return "no storage commitment transactions recorded"
    lines = []
    for row in rows:
        counts = f"{row['item_count']} instance(s)"
        if row["event_type"] is not None:
            counts += (
                f": {row['committed_count']} committed, {row['failed_count']} failed "
                f"(event type {row['event_type']})"
            )
        lines.append(
            f"{_when(row['requested_at'])} {row['state']:<9} {row['calling_ae']:<16} "
            f"{row['transaction_uid']} {counts}, attempts {row['attempts']}"
            + (f"; {row['last_detail']}" if row["last_detail"] else "")
        )
    return "\n".join(lines)


def _when(at: Any) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(float(at), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _decoded(row: Row) -> dict[str, Any]:
    item = {k: v for k, v in row.items() if k != "result"}
    if row.get("result"):
        result = CommitmentResult.from_json(row["result"])
        item["committed"] = [
            {"sop_class_uid": i.sop_class_uid, "sop_instance_uid": i.sop_instance_uid}
            for i in result.committed
        ]
        item["failed"] = [
            {
                "sop_class_uid": f.instance.sop_class_uid,
                "sop_instance_uid": f.instance.sop_instance_uid,
                "failure_reason": f"0x{f.reason:04X}",
                "meaning": _REASONS.get(f.reason, ""),
                "detail": f.detail,
            }
            for f in result.failed
        ]
    return item


def by_instance(db: Database, sop_instance_uids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per instance, every commitment transaction that named it, oldest first.

    `state` is what the gateway decided for this instance: `committed`, `failed` (with the
    Failure Reason) or `pending` (not decided yet: still waiting for it, or not looked at);
    `report` is how telling the modality went: `reported` (at `reported_at`), `pending` (to be
    sent or retried) or `failed` (gave up; the modality was never told).
    """
    found: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, CommitmentResult | None] = {}
    for row in commitments_naming(db, sop_instance_uids):
        transaction = str(row["transaction_uid"])
        if transaction not in results:
            results[transaction] = (
                CommitmentResult.from_json(row["result"]) if row["result"] else None
            )
        sop = str(row["sop_instance_uid"])
        entry: dict[str, Any] = {
            "transaction_uid": transaction,
            "requested_by": row["calling_ae"],
            "requested_at": row["requested_at"],
            **_decision(results[transaction], sop),
            "report": {"reported": "reported", "failed": "failed"}.get(row["state"], "pending"),
            "reported_at": row["reported_at"],
            "attempts": row["attempts"],
            "last_detail": row["last_detail"],
            "trace_id": trace_id_of(row["trace_context"]),
        }
        found.setdefault(sop, []).append(entry)
    return found


def _decision(result: CommitmentResult | None, sop: str) -> dict[str, Any]:
    if result is not None:
        if any(i.sop_instance_uid == sop for i in result.committed):
            return {"state": "committed", "failure_reason": None, "reason": None}
        for failure in result.failed:
            if failure.instance.sop_instance_uid == sop:
                meaning = _REASONS.get(failure.reason, "")
                reason = "; ".join(part for part in (meaning, failure.detail) if part)
                return {
                    "state": "failed",
                    "failure_reason": f"0x{failure.reason:04X}",
                    "reason": reason or None,
                }
    return {"state": "pending", "failure_reason": None, "reason": None}
