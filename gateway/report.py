"""Answers an operator asks about a study: where did it go, which rule, did every copy arrive,
who retrieved it, was it committed.

Used by `dicom-gateway trace` and `queue` and by the admin API; it reads the same database the
gateway writes, so the answer is the recorded truth, not a reconstruction. Retrievals come from
the study's `dimse.c_move` / `dimse.c_get` audit events (one per study retrieved), commitment
states from the transactions that named the study's instances (gateway/commitment/listing.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.commitment.listing import by_instance as commitments_by_instance
from gateway.db import Database
from gateway.db.deliveries import attempts_of, deliveries_of_study, queue_summary
from gateway.db.engine import Row
from gateway.db.events import events_for
from gateway.db.health import health_rows
from gateway.db.instances import instances_of_study
from gateway.routing.decision import Decision
from gateway.telemetry import trace_id_of

if TYPE_CHECKING:
    from gateway.config import Settings


def study_trace(db: Database, study_uid: str) -> dict[str, Any]:
    """Everything recorded about one study, grouped per instance and destination."""
    instances = instances_of_study(db, study_uid)
    deliveries = deliveries_of_study(db, study_uid)
    attempts = attempts_of(db, [int(d["id"]) for d in deliveries])
    by_delivery: dict[int, list[Row]] = {}
    for attempt in attempts:
        by_delivery.setdefault(int(attempt["delivery_id"]), []).append(attempt)
    by_instance: dict[int, list[dict[str, Any]]] = {}
    for delivery in deliveries:
        entry = dict(delivery)
        entry["attempts_log"] = by_delivery.get(int(delivery["id"]), [])
        by_instance.setdefault(int(delivery["instance_id"]), []).append(entry)
    commitments = commitments_by_instance(db, [str(row["sop_instance_uid"]) for row in instances])
    result = []
    for row in instances:
        decision = Decision.from_json(row["decision"])
        result.append(
            {
                "sop_instance_uid": row["sop_instance_uid"],
                "series_instance_uid": row["series_instance_uid"],
                "sop_class_uid": row["sop_class_uid"],
                "received_at": row["received_at"],
                "source": row["source"],
                "calling_ae": row["calling_ae"],
                "peer": row["peer"],
                "size": row["size"],
                "sha256": row["sha256"],
                "version": row["version"],
                "duplicates": row["duplicates"],
                "trace_context": row["trace_context"],
                "trace_id": trace_id_of(row["trace_context"]),
                "purged_at": row["purged_at"],
                "decision": decision.explain(),
                "held": decision.held,
                "deliveries": by_instance.get(int(row["id"]), []),
                "commitments": commitments.get(str(row["sop_instance_uid"]), []),
            }
        )
    summary: dict[str, dict[str, int]] = {}
    for delivery in deliveries:
        counts = summary.setdefault(delivery["destination"], {})
        counts[delivery["state"]] = counts.get(delivery["state"], 0) + 1
    committed: dict[str, int] = {}
    for instance in result:
        if instance["commitments"]:  # the newest transaction's decision counts
            state = instance["commitments"][-1]["state"]
            committed[state] = committed.get(state, 0) + 1
    trace_ids = list(dict.fromkeys(i["trace_id"] for i in result if i["trace_id"]))
    return {
        "study_instance_uid": study_uid,
        "trace_ids": trace_ids,
        "instances": result,
        "summary": summary,
        "commitment_summary": committed,
        "retrievals": [
            _retrieval(row) for row in events_for(db, study_uid=study_uid, kinds=RETRIEVALS)
        ],
        "events": events_for(db, study_uid=study_uid),
    }


RETRIEVALS = ("dimse.c_move", "dimse.c_get")


def _retrieval(event: Row) -> dict[str, Any]:
    """A C-MOVE / C-GET audit event as the study's retrieval: who, where to, what arrived."""
    try:
        detail = json.loads(event["detail"] or "{}")
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    study = detail.get("study")  # this study's share of a retrieve of several
    share: dict[str, Any] = study if isinstance(study, dict) else detail
    where = detail.get("destination")
    destination = (
        {"ae_title": where.get("ae_title"), "host": where.get("host"), "port": where.get("port")}
        if isinstance(where, dict)
        else {"ae_title": str(where), "host": None, "port": None}
        if where
        else None  # C-GET: sent back on the caller's own association
    )
    return {
        "at": event["at"],
        "operation": "C-MOVE" if event["kind"] == "dimse.c_move" else "C-GET",
        "by": event["actor"],
        "peer": detail.get("peer"),
        "destination": destination,
        "level": detail.get("level"),
        "matches": share.get("matches"),
        "completed": int(share.get("completed") or 0),
        "failed": int(share.get("failed") or 0),
        "warning": int(share.get("warning") or 0),
        "status": detail.get("status"),
        "outcome": event["outcome"],
        "reason": detail.get("reason") or next(iter(detail.get("reasons") or []), None),
    }


def format_trace(trace: dict[str, Any]) -> str:
    """Human-readable trace: summary first, then each instance's decision and attempts."""
    study = trace["study_instance_uid"]
    if not trace["instances"]:
        return f"study {study}: nothing recorded (check the UID, or the study was never received)"
    lines = [f"study {study}: {len(trace['instances'])} instance(s)"]
    for destination, counts in sorted(trace["summary"].items()):
        parts = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
        lines.append(f"  {destination}: {parts}")
    if trace.get("commitment_summary"):
        states = sorted(trace["commitment_summary"].items())
        parts = ", ".join(f"{count} {state}" for state, count in states)
        lines.append(f"  storage commitment: {parts}")
    if trace.get("trace_ids"):
        lines.append(f"  trace id(s): {', '.join(trace['trace_ids'])}")
    for retrieval in trace.get("retrievals", []):
        lines.append(f"  retrieved {_retrieval_line(retrieval)}")
    for instance in trace["instances"]:
        lines.append("")
        lines.append(f"instance {instance['sop_instance_uid']}")
        lines.append(
            f"  received {_when(instance['received_at'])} via {instance['source']}"
            f" from {instance['calling_ae'] or '-'} ({instance['peer'] or '-'}),"
            f" {instance['size']} bytes, version {instance['version']}"
            + (f", {instance['duplicates']} duplicate(s)" if instance["duplicates"] else "")
        )
        if instance.get("trace_id"):
            lines.append(f"  trace {instance['trace_id']}")
        lines.extend(f"  routing: {line}" for line in instance["decision"])
        for delivery in instance["deliveries"]:
            lines.append(
                f"  -> {delivery['destination']} (rule {delivery['rule']}): "
                f"{delivery['state']} after {delivery['attempts']} attempt(s)"
                + (
                    f"; {delivery['last_detail']}"
                    if delivery["last_detail"] and delivery["state"] != "delivered"
                    else ""
                )
            )
            if delivery.get("note"):
                lines.append(f"       {delivery['note']}")
            for attempt in delivery["attempts_log"]:
                detail = f" - {attempt['detail']}" if attempt["detail"] else ""
                lines.append(
                    f"       #{attempt['attempt']} {_when(attempt['finished_at'])} "
                    f"{attempt['outcome']} {attempt['status'] or ''}{detail}"
                )
            if delivery["state"] == "pending" and delivery["attempts"]:
                lines.append(f"       next attempt {_when(delivery['next_attempt_at'])}")
        for commitment in instance.get("commitments", []):
            lines.append(f"  commitment {_commitment_line(commitment)}")
    return "\n".join(lines)


def _retrieval_line(retrieval: dict[str, Any]) -> str:
    destination = retrieval["destination"]
    where = (
        "back to the caller"
        if destination is None
        else f"to {destination['ae_title']}"
        + (f" ({destination['host']}:{destination['port']})" if destination["host"] else "")
    )
    line = (
        f"{_when(retrieval['at'])} by {retrieval['by'] or '-'} ({retrieval['peer'] or '-'}): "
        f"{retrieval['operation']} {where}, {retrieval['completed']} completed, "
        f"{retrieval['failed']} failed, {retrieval['warning']} warning, "
        f"status {retrieval['status'] or '-'}"
    )
    return line + (f"; {retrieval['reason']}" if retrieval["reason"] else "")


def _commitment_line(commitment: dict[str, Any]) -> str:
    state = commitment["state"]
    if state == "failed":
        state += f" {commitment['failure_reason']}" + (
            f" ({commitment['reason']})" if commitment["reason"] else ""
        )
    report = commitment["report"]
    detail = commitment["last_detail"]
    told = (
        f"reported {_when(commitment['reported_at'])}"
        if report == "reported"
        else "report failed, the modality was not told"
        if report == "failed"
        else "report pending" + (f" ({detail})" if detail else "")
    )
    return (
        f"{commitment['transaction_uid']} from {commitment['requested_by']} "
        f"(requested {_when(commitment['requested_at'])}): {state}, {told}"
    )


def format_queue(rows: list[Row]) -> str:
    if not rows:
        return "queue is empty: no deliveries recorded"
    header = f"{'destination':<20} {'state':<11} {'count':>7} {'oldest':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['destination']:<20} {row['state']:<11} {row['count']:>7} "
            f"{_age(float(row['oldest_age'] or 0)):>10}"
        )
    return "\n".join(lines)


def destinations_health(settings: Settings, db: Database) -> list[dict[str, Any]]:
    """Each configured destination's breaker state, its failover and its pending work."""
    rows = {str(row["destination"]): row for row in health_rows(db)}
    queued: dict[str, dict[str, int]] = {}
    for row in queue_summary(db):
        queued.setdefault(str(row["destination"]), {})[str(row["state"])] = int(row["count"])
    result = []
    for name, destination in sorted(settings.destinations.items()):
        row = rows.get(name) or {}
        policy = settings.health.policy(name)
        failover = settings.health.failover.get(name)
        counts = queued.get(name, {})
        result.append(
            {
                "destination": name,
                "type": destination.type,
                "state": row.get("state", "up"),
                "since": row.get("since"),
                "consecutive_failures": int(row.get("consecutive_failures") or 0),
                "last_error": row.get("last_error"),
                "last_error_at": row.get("last_error_at"),
                "last_success_at": row.get("last_success_at"),
                "next_probe_at": row.get("next_probe_at") if row.get("state") == "down" else None,
                "failure_threshold": policy.failure_threshold,
                "probe_interval": policy.probe_interval,
                "failover": None
                if failover is None
                else {"to": failover.to, "after": failover.after},
                "pending": counts.get("pending", 0) + counts.get("leased", 0),
                "dead": counts.get("dead", 0),
                "failed_over": counts.get("failed_over", 0),
            }
        )
    return result


def format_destinations(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no destinations configured"
    header = (
        f"{'destination':<16} {'state':<9} {'since':<23} {'fails':>5} {'queued':>7} "
        f"{'last success':<23} last error"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['destination']:<16} {_state(row):<9} {_when(row['since']):<23} "
            f"{row['consecutive_failures']:>5} {row['pending']:>7} "
            f"{_when(row['last_success_at']):<23} {row['last_error'] or '-'}"
        )
    for row in rows:
        if row["failover"] is not None:
            lines.append(
                f"{row['destination']}: fails over to {row['failover']['to']} after "
                f"{row['failover']['after']:g}s down ({row['failed_over']} failed over so far)"
            )
        if row["state"] == "down" and not row["pending"]:
            probe = _IDLE_PROBES.get(str(row["type"]), "an idle probe")
            lines.append(
                f"{row['destination']}: nothing queued; idle probe ({probe}, no instance sent) "
                f"every {row['probe_interval']:g}s, next {_when(row['next_probe_at'])}"
            )
        elif row["state"] == "down" and row["next_probe_at"] is not None:
            lines.append(f"{row['destination']}: next probe {_when(row['next_probe_at'])}")
    return "\n".join(lines)


_IDLE_PROBES = {"dimse": "C-ECHO", "dicomweb": "QIDO-RS", "s3": "HeadBucket"}
"""What a down destination with nothing queued is probed with (gateway/forward/health.py)."""


def _state(row: dict[str, Any]) -> str:
    """`untried` for a destination nothing was sent to yet (its breaker is closed: `up`)."""
    return "untried" if row["since"] is None and row["state"] == "up" else str(row["state"])


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(float(epoch), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
