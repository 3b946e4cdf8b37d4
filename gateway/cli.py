"""The `dicom-gateway` command: serve, check-config, trace, queue, retry, import, spool-check,
commitments, token, audit, audit-archive.

Every command reads the same YAML config (`--config`, or $DICOM_GATEWAY_CONFIG, or
./gateway.yaml). Errors print one line that names the problem and the fix, and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.exceptions import GatewayError

# Imported where used: `serve` must hold pydicom's pixel codecs back (gateway/dicom/codecs.py)
# before anything imports pydicom, and gateway.config does, through the routing rules.
if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.db import Database

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-gateway", description="DICOMweb-first gateway and DIMSE bridge"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("GATEWAY_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            "-c",
            default=os.environ.get("DICOM_GATEWAY_CONFIG", "gateway.yaml"),
            help="YAML config file (default: $DICOM_GATEWAY_CONFIG or gateway.yaml)",
        )
        return sub

    serve = command("serve", "run the gateway until SIGINT/SIGTERM")
    serve.set_defaults(handler=_serve)
    check = command("check-config", "validate the config file and print a summary")
    check.set_defaults(handler=_check_config)
    trace = command("trace", "show where a study went, which rule sent it there and why")
    trace.add_argument("study_uid")
    trace.add_argument("--json", action="store_true", help="machine-readable output")
    trace.set_defaults(handler=_trace)
    queue = command("queue", "delivery queue depth and oldest age per destination and state")
    queue.add_argument("--json", action="store_true", help="machine-readable output")
    queue.set_defaults(handler=_queue)
    retry = command("retry", "re-queue dead deliveries of a destination")
    retry.add_argument("destination")
    retry.add_argument("--study", help="only this StudyInstanceUID")
    retry.add_argument(
        "--failed-over",
        action="store_true",
        help="send failed-over deliveries to DESTINATION as well (their copies stay at the "
        "failover destination); without it, dead deliveries are re-queued",
    )
    retry.set_defaults(handler=_retry)
    bulk = command("import", "ingest DICOM files from folders (copies them; originals stay)")
    bulk.add_argument("paths", nargs="+", type=Path, help="files or folders")
    bulk.add_argument("--no-recursive", action="store_true", help="do not descend into folders")
    bulk.add_argument("--calling-ae", help="route as if sent by this AE title (rules' calling_ae)")
    bulk.add_argument("--batch", type=int, default=50, help="files committed together (50)")
    bulk.set_defaults(handler=_import)
    check_spool = command(
        "spool-check", "check that every recorded instance has its bytes; find crash leftovers"
    )
    check_spool.add_argument("--verify", action="store_true", help="re-hash every object")
    check_spool.add_argument(
        "--delete-orphans", action="store_true", help="delete unreferenced objects past --min-age"
    )
    check_spool.add_argument("--min-age", default="24h", help="orphan age: 30m, 24h, 7d (24h)")
    check_spool.add_argument("--json", action="store_true", help="machine-readable output")
    check_spool.set_defaults(handler=_spool_check)
    destinations = command(
        "destinations", "health of each destination: state, since when, last error, failover"
    )
    destinations.add_argument("--json", action="store_true", help="machine-readable output")
    destinations.set_defaults(handler=_destinations)
    token = command("token", "print a bearer token from the built-in issuer (auth.mode builtin)")
    token.add_argument(
        "--scope",
        default="dicomweb.read dicomweb.write",
        help='space-separated scopes, e.g. "dicomweb.read gateway.admin"',
    )
    token.add_argument("--subject", default="cli", help="the token's subject (sub claim)")
    token.add_argument("--ttl", default="1h", help="lifetime: 30s, 15m, 1h, 7d")
    token.set_defaults(handler=_token)
    audit = command("audit", "show the audit trail of a study or of an actor")
    audit.add_argument("--study", help="StudyInstanceUID")
    audit.add_argument("--actor", help="token subject, calling AE title, or 'anonymous'")
    audit.add_argument("--limit", type=int, default=200, help="newest N events (default 200)")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(handler=_audit)
    archive = command(
        "audit-archive",
        "move audit events older than the retention period to the archive folder, then delete "
        "them from the database",
    )
    archive.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="events older than DAYS days (default: audit.retention_days)",
    )
    archive.add_argument(
        "--dry-run", action="store_true", help="count what would move; write and delete nothing"
    )
    archive.add_argument("--batch", type=int, help="events per transaction (audit.batch_size)")
    archive.add_argument("--json", action="store_true", help="machine-readable summary")
    archive.set_defaults(handler=_audit_archive)
    commitments = command("commitments", "recent storage commitment transactions and their state")
    commitments.add_argument("--ae", help="only requests from this calling AE title")
    commitments.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
    commitments.add_argument("--json", action="store_true", help="machine-readable output")
    commitments.set_defaults(handler=_commitments)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from gateway.config import load_settings

    return load_settings(args.config)


def _serve(args: argparse.Namespace) -> int:
    from gateway.dicom import codecs
    from gateway.memory import limit_malloc_arenas

    # First, before pydicom is imported: memory that a byte-moving server never uses.
    limit_malloc_arenas()
    codecs.defer()
    from gateway.logging_setup import configure_logging
    from gateway.service import Gateway

    settings = _settings(args)
    configure_logging(settings.logging, level=args.log_level.upper())
    gateway = Gateway(settings)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %d, stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gateway.start()
    log.info(
        "gateway %s ready: DIMSE port %d, %d destination(s), %d rule(s)",
        settings.node.ae_title,
        gateway.dimse_port,
        len(settings.destinations),
        len(settings.routes),
    )
    stopping.wait()
    gateway.stop()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    node = settings.node
    print(f"config {args.config} is valid")
    print(
        f"  node: AE {node.ae_title}, DIMSE {node.dimse.host}:{node.dimse.port}"
        + (f", HTTP {node.http.host}:{node.http.port}" if node.http else "")
    )
    print(f"  storage: spool {settings.storage.spool}, database {settings.storage.database}")
    for name, destination in settings.destinations.items():
        where = (
            f"{destination.ae_title}@{destination.host}:{destination.port}"
            if destination.type == "dimse"
            else destination.url
        )
        print(f"  destination {name}: {destination.type} {where}")
        transform = destination.transform
        if transform is not None:
            print(f"    transform: {transform.summary()}")
    commitment = settings.dimse.storage_commitment
    if commitment is not None:
        peers = ", ".join(f"{p.ae_title}@{p.host}:{p.port}" for p in commitment.peers.values())
        print(
            f"  storage commitment: policy {commitment.policy}, timeout {commitment.timeout:g} s, "
            f"reports to {peers or 'nobody (every request is refused)'}"
        )
    for title, target in settings.dimse.move_destinations.items():
        print(f"  move destination {title}: {target.host}:{target.port}")
    for name, failover in sorted(settings.health.failover.items()):
        print(f"  failover {name}: -> {failover.to} after {failover.after:g}s down")
    audit = settings.audit
    if audit.retention_days is None:
        print("  audit trail: kept forever (audit.retention_days not set)")
    else:
        where = (
            f"archived to {audit.archive_dir} (a file per {audit.archive_period}), then deleted"
            if audit.archive_dir is not None
            else "DELETED WITHOUT A COPY (audit.archive: false)"
        )
        print(f"  audit trail: events older than {audit.retention_days:g} days are {where}")
    for rule in settings.routes:
        flags = " (final)" if rule.final else ""
        print(f"  rule {rule.name}: -> {', '.join(rule.forward)}{flags}")
    default = settings.routing_default
    print(f"  no rule matched: {'hold' if default is None else ', '.join(default)}")
    return 0


def _open_db(args: argparse.Namespace) -> Database:
    from gateway.db import open_database

    return open_database(_settings(args).storage.database)


def _trace(args: argparse.Namespace) -> int:
    from gateway.report import format_trace, study_trace

    db = _open_db(args)
    trace = study_trace(db, args.study_uid)
    if args.json:
        print(json.dumps(trace, indent=2, default=str))
    else:
        print(format_trace(trace))
    return 0 if trace["instances"] else 1


def _queue(args: argparse.Namespace) -> int:
    from gateway.db.deliveries import queue_summary
    from gateway.report import format_queue

    rows = queue_summary(_open_db(args))
    print(json.dumps(rows, indent=2) if args.json else format_queue(rows))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from gateway.auditlog import events_json, format_events, recent_events

    rows = recent_events(_open_db(args), study_uid=args.study, actor=args.actor, limit=args.limit)
    print(events_json(rows) if args.json else format_events(rows))
    return 0


def _audit_archive(args: argparse.Namespace) -> int:
    import getpass
    import time
    from dataclasses import asdict

    from gateway.audit_retention import ArchiveRun, archive_expired, archive_of, cutoff_for
    from gateway.audit_settings import MAX_BATCH
    from gateway.db import open_database
    from gateway.maintenance_report import format_audit_archive
    from gateway.progress import ProgressLine, rate_and_eta

    settings = _settings(args)
    days = settings.audit.retention_days if args.older_than is None else args.older_than
    if days is None:
        print(
            "error: give --older-than DAYS or set audit.retention_days in the config",
            file=sys.stderr,
        )
        return 2
    if days < 1:
        print("error: --older-than must be at least 1 (day)", file=sys.stderr)
        return 2
    batch = settings.audit.batch_size if args.batch is None else args.batch
    if not 1 <= batch <= MAX_BATCH:
        print(f"error: --batch must be between 1 and {MAX_BATCH}", file=sys.stderr)
        return 2
    archive = archive_of(settings.audit)
    if archive is None and settings.audit.archive:
        print(
            "error: audit.archive_dir is not set: set it to the folder for the JSON Lines "
            "archive, or set audit.archive: false to delete old events without a copy",
            file=sys.stderr,
        )
        return 2
    progress = ProgressLine()
    started = time.monotonic()

    def show(current: ArchiveRun) -> None:
        rate, eta = rate_and_eta(current.moved, current.expired, time.monotonic() - started)
        share = 100 * current.moved / current.expired if current.expired else 100.0
        left = f", {eta:.0f} s left" if eta is not None and current.left else ""
        progress.update(
            f"audit-archive: {current.moved}/{current.expired} events ({share:.0f} %), "
            f"{rate:.0f} events/s{left}"
        )

    db = open_database(settings.storage.database)
    try:
        run = archive_expired(
            db,
            archive,
            cutoff=cutoff_for(days),
            batch_size=batch,
            dry_run=args.dry_run,
            actor=f"cli:{getpass.getuser()}",
            on_batch=show,
        )
    finally:
        db.close()
    if not args.dry_run:
        progress.done(
            f"audit-archive: {run.moved}/{run.expired} events in {time.monotonic() - started:.1f} s"
        )
    if args.json:
        folder = None if archive is None else str(archive.folder)
        print(json.dumps({**asdict(run), "folder": folder}, indent=2))
    else:
        print(format_audit_archive(run, archive))
    return 0 if run.complete or run.dry_run else 1


def _commitments(args: argparse.Namespace) -> int:
    from gateway.commitment.listing import commitments_json, format_commitments
    from gateway.db.commitments import recent_commitments

    rows = recent_commitments(_open_db(args), limit=args.limit, calling_ae=args.ae)
    print(commitments_json(rows) if args.json else format_commitments(rows))
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.auth.factory import builtin_issuer

    settings = _settings(args)
    if settings.auth.get("mode", "builtin") != "builtin":
        print(
            "error: `token` needs auth.mode builtin; get tokens from your OIDC issuer",
            file=sys.stderr,
        )
        return 2
    print(
        builtin_issuer(settings).issue(
            args.subject, args.scope.split(), ttl_seconds=_duration(args.ttl)
        )
    )
    return 0


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise GatewayError(
            f"--ttl {text!r} is not a duration; write e.g. 30s, 15m, 1h, 7d"
        ) from None


def _retry(args: argparse.Namespace) -> int:
    from gateway.db import open_database
    from gateway.db.deliveries import requeue_dead

    settings = _settings(args)
    if args.destination not in settings.destinations:
        known = ", ".join(settings.destinations) or "none"
        print(f"error: no destination {args.destination!r}; configured: {known}", file=sys.stderr)
        return 2
    if args.failed_over:
        from gateway.db.health import requeue_failed_over

        requeue = requeue_failed_over
    else:
        requeue = requeue_dead
    count = requeue(
        open_database(settings.storage.database), args.destination, study_uid=args.study
    )
    scope = f" of study {args.study}" if args.study else ""
    kind = "failed-over" if args.failed_over else "dead"
    print(
        f"re-queued {count} {kind} deliver{'y' if count == 1 else 'ies'}{scope} "
        f"for {args.destination}"
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    import getpass
    import time

    from gateway.db import open_database
    from gateway.importer import ImportReport, find_files, import_files
    from gateway.ingest import Ingestor, Source
    from gateway.maintenance_report import format_import
    from gateway.progress import ProgressLine, human_bytes, rate_and_eta
    from gateway.spool import open_spool

    settings = _settings(args)
    try:
        candidates = find_files(args.paths, recursive=not args.no_recursive)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = ImportReport(total_files=len(candidates), total_bytes=sum(c.size for c in candidates))
    db = open_database(settings.storage.database)
    ingestor = Ingestor(settings, open_spool(settings.storage.spool), db)
    source = Source(door="import", calling_ae=args.calling_ae, actor=f"import:{getpass.getuser()}")
    progress = ProgressLine()
    started = time.monotonic()

    def show(current: ImportReport) -> None:
        rate, eta = rate_and_eta(current.seen, current.total_files, time.monotonic() - started)
        share = 100 * current.seen / current.total_files if current.total_files else 100.0
        unfinished = eta is not None and current.seen < current.total_files
        left = f", {eta:.0f} s left" if unfinished else ""
        progress.update(
            f"import: {current.seen}/{current.total_files} files ({share:.0f} %), "
            f"{human_bytes(current.seen_bytes)} of {human_bytes(current.total_bytes)}, "
            f"{rate:.0f} files/s{left}"
        )

    import_files(
        ingestor,
        candidates,
        source,
        batch_size=max(args.batch, 1),
        report=report,
        on_progress=show,
    )
    elapsed = time.monotonic() - started
    progress.done(
        f"import: {report.seen}/{report.total_files} files, "
        f"{human_bytes(report.seen_bytes)} in {elapsed:.1f} s"
    )
    print(format_import(report))
    db.close()
    if report.stopped:
        return 2
    return 1 if report.refused else 0


def _spool_check(args: argparse.Namespace) -> int:
    from gateway.db import open_database
    from gateway.maintenance_report import format_spool_check, spool_check_json
    from gateway.progress import ProgressLine, human_bytes
    from gateway.spool import open_spool
    from gateway.spool_check import SpoolCheckReport, check_spool

    settings = _settings(args)
    progress = ProgressLine()

    def show(report: SpoolCheckReport) -> None:
        progress.update(
            f"spool-check: {report.listed} objects listed ({human_bytes(report.listed_bytes)})"
            + (f", {report.verified} verified" if args.verify else "")
        )

    report = check_spool(
        open_database(settings.storage.database),
        open_spool(settings.storage.spool),
        min_age=_duration(args.min_age),
        delete_orphans=args.delete_orphans,
        verify=args.verify,
        on_progress=show,
    )
    progress.done(
        f"spool-check: {report.listed} objects listed ({human_bytes(report.listed_bytes)})"
    )
    if args.json:
        print(json.dumps(spool_check_json(report), indent=2))
    else:
        print(format_spool_check(report, deleting=args.delete_orphans))
    return 0 if report.healthy else 1


def _destinations(args: argparse.Namespace) -> int:
    from gateway.db import open_database
    from gateway.report import destinations_health, format_destinations

    settings = _settings(args)
    rows = destinations_health(settings, open_database(settings.storage.database))
    print(json.dumps(rows, indent=2) if args.json else format_destinations(rows))
    return 0
