"""The one ingest use case every door (DIMSE C-STORE, STOW-RS) calls.

Order matters and is the product's core promise:
  1. parse and check the header (refuse bad input before anything is written);
  2. route it (a pure function; the Decision is kept whatever it says);
  3. put the bytes into the spool durably (fsync + rename, or S3 PUT);
  4. commit instance + Decision + one delivery per destination in one transaction.
Only after step 4 returns does the door answer success. A failure at step 3 or 4 leaves no
record, and the spool object of a failed step 4 is removed, so nothing is half-written.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import Settings
from gateway.db import Database
from gateway.db.events import audit
from gateway.db.instances import IngestOutcome, NewInstance, record_instance
from gateway.dicom.attributes import header_json, indexed_values
from gateway.dicom.header import InstanceHeader, read_header
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.routing.decision import Decision
from gateway.routing.engine import RoutingContext, evaluate
from gateway.spool import Spool, spool_key
from gateway.telemetry import (
    BYTES,
    CALLED_AE,
    CALLING_AE,
    DOOR,
    OUTCOME,
    PEER_ADDRESS,
    RULE,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    Telemetry,
    context_from_traceparent,
    set_attributes,
    traceparent_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Who sent an instance and through which door."""

    door: str  # "dimse" | "stowrs"
    calling_ae: str | None = None
    called_ae: str | None = None
    peer: str | None = None
    actor: str | None = None  # AE title or token subject, for the audit trail

    @property
    def who(self) -> str:
        return self.actor or self.calling_ae or self.peer or "unknown"


@dataclass(frozen=True, slots=True)
class IngestResult:
    instance_id: int
    header: InstanceHeader
    outcome: IngestOutcome
    decision: Decision
    size: int
    sha256: str


class Ingestor:
    """Accepts complete Part 10 files from any door and makes them durable and routed."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[IngestResult], None] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._spool = spool
        self._db = db
        self._clock = clock
        self._on_stored = on_stored
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()

    @property
    def staging_dir(self) -> Path:
        """Where doors should write incoming files so the spool can rename, not copy."""
        return self._spool.staging_dir

    def accept_file(
        self, path: Path, source: Source, *, trace_context: str | None = None
    ) -> IngestResult:
        """Make the file at `path` durable and routed; `path` is consumed on success.

        Traced as an `ingest` span: a child of `trace_context` (a W3C traceparent) when given,
        else of the current span (the C-STORE span, or the inbound HTTP request's), so a door
        needs no tracing code of its own. The ingest span's traceparent is stored with the
        instance; delivery attempts join the trace from there.

        Raises InvalidInputError (refuse, with a DICOM status), SpoolError or StoreError
        (out of resources: the sender should retry later).
        """
        attributes = {
            DOOR: source.door,
            CALLING_AE: source.calling_ae,
            CALLED_AE: source.called_ae,
            PEER_ADDRESS: source.peer,
        }
        parent = context_from_traceparent(trace_context)
        with self._telemetry.span("ingest", parent=parent, attributes=attributes) as span:
            try:
                result = self._accept(path, source, traceparent_of(span) or trace_context)
            except Exception:
                self._telemetry.metrics.refused(source.door)
                raise
            header = result.header
            set_attributes(
                span,
                {
                    STUDY_UID: header.study_instance_uid,
                    SERIES_UID: header.series_instance_uid,
                    SOP_UID: header.sop_instance_uid,
                    BYTES: result.size,
                    OUTCOME: result.outcome.value,
                },
            )
            self._telemetry.metrics.received(source.door, source.calling_ae)
            return result

    def _accept(self, path: Path, source: Source, trace_context: str | None) -> IngestResult:
        """accept_file without the span: `trace_context` is what to store with the instance."""
        try:
            header = read_header(path)
        except InvalidInputError as exc:
            self._refused(source, None, str(exc))
            raise
        for note in header.notes:
            log.warning("instance from %s (%s): %s", source.who, source.door, note)
        received_at = self._clock()
        context = RoutingContext(
            source=source.door,
            calling_ae=source.calling_ae,
            called_ae=source.called_ae,
            site=self._settings.node.site,
            received_at=datetime.fromtimestamp(received_at, tz=UTC),
        )
        with self._telemetry.span("routing") as routing:
            decision = evaluate(
                self._settings.routes,
                header.dataset,
                context,
                default=self._settings.routing_default,
            )
            rules = sorted({target.rule for target in decision.targets})
            set_attributes(routing, {RULE: rules, "gateway.held": decision.held})
        # Read everything we need from the header before the file moves into the spool
        # (deferred values are read from the original path).
        attributes = indexed_values(header.dataset)
        document = header_json(header.dataset)
        key = spool_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self._telemetry.span("spool write") as spooling:
            stored = self._spool.put(path, key)
            set_attributes(spooling, {BYTES: stored.size})
        new = NewInstance(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            attributes=attributes,
            header_json=document,
            spool_key=stored.key,
            size=stored.size,
            sha256=stored.sha256,
            source=source.door,
            calling_ae=source.calling_ae,
            called_ae=source.called_ae,
            peer=source.peer,
            received_at=received_at,
            decision=decision,
            trace_context=trace_context,
        )
        try:
            with self._telemetry.span("database commit"):
                recorded = record_instance(
                    self._db,
                    new,
                    duplicate_policy=self._settings.ingest.duplicate_policy,
                    actor=source.who,
                    garbage_delay=self._settings.delivery.lease_seconds * 2,
                )
        except InvalidInputError as exc:
            self._discard(stored.key)
            self._refused(source, header, str(exc))
            raise
        except BaseException:
            self._discard(stored.key)
            raise
        if recorded.outcome in (IngestOutcome.IDENTICAL, IngestOutcome.IGNORED):
            self._discard(stored.key)
        result = IngestResult(
            instance_id=recorded.instance_id,
            header=header,
            outcome=recorded.outcome,
            decision=decision,
            size=stored.size,
            sha256=stored.sha256,
        )
        log.info(
            "stored %s from %s (%s): %s -> %s",
            header.sop_instance_uid,
            source.who,
            source.door,
            recorded.outcome.value,
            ", ".join(t.destination for t in decision.targets) or "held",
            extra={"fields": self._log_fields(source, result)},
        )
        if self._on_stored is not None:
            self._on_stored(result)
        return result

    def _log_fields(self, source: Source, result: IngestResult) -> dict[str, object]:
        """Structured fields of the `instance.stored` log line; PHI only if logging.phi."""
        header = result.header
        fields: dict[str, object] = {
            "event": "instance.stored",
            DOOR: source.door,
            CALLING_AE: source.calling_ae,
            PEER_ADDRESS: source.peer,
            STUDY_UID: header.study_instance_uid,
            SERIES_UID: header.series_instance_uid,
            SOP_UID: header.sop_instance_uid,
            BYTES: result.size,
            OUTCOME: result.outcome.value,
            "destinations": [t.destination for t in result.decision.targets],
        }
        if self._settings.logging.phi:
            for keyword in ("PatientID", "AccessionNumber"):
                value = header.dataset.get(keyword)
                if value is not None:
                    fields[keyword] = str(value)
        return fields

    def _discard(self, key: str) -> None:
        with contextlib.suppress(SpoolError):
            self._spool.delete(key)

    def _refused(self, source: Source, header: InstanceHeader | None, reason: str) -> None:
        log.warning("refused an instance from %s (%s): %s", source.who, source.door, reason)
        with contextlib.suppress(StoreError):
            audit(
                self._db,
                "instance.refused",
                outcome="refused",
                actor=source.who,
                study_uid=header.study_instance_uid if header else None,
                sop_uid=header.sop_instance_uid if header else None,
                detail={"door": source.door, "peer": source.peer, "reason": reason},
            )
