"""`dicom-gateway commitments`: recent storage commitment transactions for operators.

Reads the `commitments` table the N-ACTION service and the reporter write, so what it shows is
what the modality was (or will be) told: per transaction its state, counts, attempts, the last
outcome and, with `--json`, each failed instance with its Failure Reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gateway.db.commitments import CommitmentResult
from gateway.db.engine import Row

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
