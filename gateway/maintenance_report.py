"""What the maintenance commands print: `dicom-gateway import`, `spool-check`, `audit-archive`.

Problems come first and each names what to do about it; long lists are cut after a few
dozen lines (the --json output of spool-check has them all).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from gateway.audit_archive import EventArchive, file_name
from gateway.audit_retention import ArchiveRun
from gateway.db.instances import IngestOutcome
from gateway.importer import ImportReport
from gateway.spool_check import SpoolCheckReport


def format_import(report: ImportReport) -> str:
    """The summary `dicom-gateway import` prints after its progress line."""
    counts = report.outcomes
    lines = [
        f"accepted {report.accepted}: stored {counts.get(IngestOutcome.STORED, 0)}, "
        f"already held {counts.get(IngestOutcome.IDENTICAL, 0)}, "
        f"replaced {counts.get(IngestOutcome.REPLACED, 0)}, "
        f"ignored (duplicate_policy) {counts.get(IngestOutcome.IGNORED, 0)}"
    ]
    for title, items in (("refused", report.refused), ("skipped", report.skipped)):
        if items:
            lines.append(f"{title} {len(items)}:")
            lines += [f"  {path}: {reason}" for path, reason in items[:20]]
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more")
    if report.stopped:
        lines.append(
            f"stopped early: {report.stopped}; files committed before this are stored and "
            "queued; free space (or fix the storage) and run the same import again: files "
            "already held are recognised and not sent twice"
        )
    elif report.accepted:
        lines.append(
            "deliveries are queued; a running `dicom-gateway serve` sends them "
            "(`dicom-gateway queue` shows progress)"
        )
    return "\n".join(lines)


def spool_check_json(report: SpoolCheckReport) -> dict[str, object]:
    return {
        "listed": report.listed,
        "recorded": report.recorded,
        "missing": [asdict(m) for m in report.missing],
        "corrupt": [{**asdict(m), "reason": why} for m, why in report.corrupt],
        "orphans": [{"key": o.key, "size": o.size, "modified": o.modified} for o in report.orphans],
        "recent_unreferenced": report.young_unreferenced,
        "deleted": report.deleted,
        "verified": report.verified,
    }


def format_spool_check(report: SpoolCheckReport, *, deleting: bool) -> str:
    """What `dicom-gateway spool-check` prints: problems first, each with what to do."""
    lines = [f"{report.recorded} instances recorded, {report.listed} objects in the spool"]
    if report.missing:
        lines.append(
            f"MISSING {len(report.missing)}: recorded instances whose bytes are gone; they "
            "cannot be delivered or retrieved: ask the sender to send these studies again"
        )
        lines += [
            f"  study {m.study_instance_uid} instance {m.sop_instance_uid} ({m.spool_key})"
            for m in report.missing[:50]
        ]
    if report.corrupt:
        lines.append(f"CORRUPT {len(report.corrupt)}: bytes differ from what was received")
        lines += [
            f"  study {m.study_instance_uid} instance {m.sop_instance_uid}: {why}"
            for m, why in report.corrupt[:50]
        ]
    if report.orphans:
        verb = "deleted" if deleting else "found (run with --delete-orphans to remove them)"
        lines.append(
            f"orphans {len(report.orphans)} {verb}: objects no instance refers to, left by a "
            "crash between the spool write and the database commit (never acknowledged)"
        )
        lines += [f"  {o.key} ({o.size} bytes)" for o in report.orphans[:20]]
    if report.young_unreferenced:
        lines.append(
            f"{report.young_unreferenced} unreferenced object(s) younger than --min-age "
            "left alone (an ingest may still be committing them)"
        )
    if report.verified:
        lines.append(f"verified {report.verified} object(s) against their recorded SHA-256")
    if report.healthy:
        lines.append("ok: every recorded instance has its bytes")
    return "\n".join(lines)


def format_audit_archive(run: ArchiveRun, archive: EventArchive | None) -> str:
    """What `dicom-gateway audit-archive` prints after its progress line."""
    cutoff = _utc(run.cutoff)
    if run.expired == 0 and not run.recovered:
        return f"no audit events older than {cutoff}; nothing to do"
    lines = [run.recovered] if run.recovered else []
    if run.dry_run:
        assert run.oldest is not None and run.newest is not None
        where = (
            f"archived into {archive.folder} ({file_name(run.oldest, archive.period)} .. "
            f"{file_name(run.newest, archive.period)}) and then deleted"
            if archive is not None
            else "DELETED WITHOUT A COPY (audit.archive: false)"
        )
        lines.append(
            f"dry run: {run.expired} audit event(s) older than {cutoff} (oldest "
            f"{_utc(run.oldest)}, newest {_utc(run.newest)}) would be {where}; "
            "nothing was written or deleted"
        )
        return "\n".join(lines)
    if archive is not None:
        lines.append(
            f"archived {run.moved} audit event(s) older than {cutoff} in {run.batches} "
            f"batch(es) into {archive.folder}, then deleted them from the database:"
        )
        lines += [f"  {name}: {n} event(s) appended" for name, n in sorted(run.files.items())]
    else:
        lines.append(
            f"deleted {run.moved} audit event(s) older than {cutoff} without a copy "
            "(audit.archive: false)"
        )
    if not run.complete:
        lines.append(
            f"stopped with {run.left} older event(s) still in the database; run the same "
            "command again"
        )
    return "\n".join(lines)


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
