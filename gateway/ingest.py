"""The one ingest use case every door (DIMSE C-STORE, STOW-RS) calls.

Order matters and is the product's core promise:
  1. parse and check the header (refuse bad input before anything is written);
  2. route it (a pure function; the Decision is kept whatever it says);
  3. put the bytes into the spool durably (fsync + rename + folder fsync, or S3 PUT);
  4. commit instance + Decision + one delivery per destination in one transaction.
Only after step 4 returns does the door answer success. A failure at step 3 or 4 leaves no
record, and the spool object of a failed step 4 is removed, so nothing is half-written.

A door that acknowledges several instances at once (a STOW-RS request) uses a batch: steps 1-3
run for each instance as it arrives, with the folder fsyncs of step 3 left for the end; then
every folder is fsynced once and all instances are committed in one transaction (group
commit). An instance refused on its own (bad header, duplicate policy) does not hold back the
others; a failed commit fails them all and removes their spool objects.

The DICOM JSON header that QIDO-RS and WADO-RS metadata serve is not made here: it costs more
than the rest of ingest, and most instances are forwarded, never queried. It is made from the
spool object on first read (gateway/headers.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span

from gateway.config import Settings
from gateway.db import Database
from gateway.db.events import audit
from gateway.db.instances import IngestOutcome, NewInstance, Recorded, record_instances
from gateway.dicom.attributes import indexed_values
from gateway.dicom.header import InstanceHeader, read_header
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.routing.decision import Decision
from gateway.routing.engine import RoutingContext, evaluate
from gateway.spool import Spool, StoredObject, spool_key
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
    end_span,
    set_attributes,
    traceparent_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Who sent an instance and through which door."""

    door: str  # "dimse" | "stowrs" | "import"
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


# What became of one instance of a batch: stored, or the error that refused or failed it
# (InvalidInputError: refused, with a DICOM status; SpoolError, StoreError: out of resources).
Outcome = IngestResult | Exception


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

    @property
    def spool(self) -> Spool:
        """The spool instances are kept in (read by the query/retrieve services)."""
        return self._spool

    @property
    def db(self) -> Database:
        """The database instances are recorded in (read by the query/retrieve services)."""
        return self._db

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
        batch = IngestBatch(self, source, trace_context=trace_context, group=False)
        batch.add(path)
        [outcome] = batch.commit()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def accept_files(
        self, paths: Sequence[Path], source: Source, *, trace_context: str | None = None
    ) -> list[Outcome]:
        """`accept_file` for files acknowledged together: one outcome per path, in order.

        Each file is traced, audited and refused on its own exactly as `accept_file` would;
        the stored ones become durable together (group commit), so the caller may acknowledge
        them all once this returns.
        """
        batch = self.batch(source, trace_context=trace_context)
        for path in paths:
            batch.add(path)
        return batch.commit()

    def batch(self, source: Source, *, trace_context: str | None = None) -> IngestBatch:
        """A group commit a door fills as instances arrive (see `IngestBatch`)."""
        return IngestBatch(self, source, trace_context=trace_context, group=True)

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


@dataclass(slots=True)
class _Item:
    """One instance of a batch, from its arrival until it is committed or refused."""

    span: Span
    context: Context  # the ingest span's: child spans and log lines of this instance use it
    header: InstanceHeader | None = None
    decision: Decision | None = None
    stored: StoredObject | None = None
    new: NewInstance | None = None
    outcome: Outcome | None = None


class IngestBatch:
    """Instances one door acknowledges together.

    `add` checks, routes and spools each instance as it arrives (in whatever thread the door
    uses, one call at a time); `commit` makes all of them durable and returns one outcome per
    `add`, in order. Only then may the door answer. `abandon` removes what was spooled if the
    door gives up before committing.
    """

    def __init__(
        self, ingestor: Ingestor, source: Source, *, trace_context: str | None, group: bool
    ) -> None:
        self._ingestor = ingestor
        self._source = source
        self._trace_context = trace_context
        self._parent = context_from_traceparent(trace_context)
        self._group = group  # spool fsyncs wait for the commit, to run side by side
        self._items: list[_Item] = []
        self._done = False

    @property
    def done(self) -> bool:
        """True once committed or abandoned."""
        return self._done

    def add(self, path: Path, *, header: InstanceHeader | None = None) -> int:
        """Check, route and spool the file at `path`; return its index among the outcomes.

        `header` is `read_header(path)` if the door has read it already (to check the instance
        against its request); otherwise it is read here. A refused instance is audited, its
        span marked and counted now; its file is left to the door, as with `accept_file`.
        """
        if self._done:
            raise RuntimeError("this ingest batch is already committed or abandoned")
        ingestor, source = self._ingestor, self._source
        span = ingestor._telemetry.start_span(
            "ingest",
            parent=self._parent,
            attributes={
                DOOR: source.door,
                CALLING_AE: source.calling_ae,
                CALLED_AE: source.called_ae,
                PEER_ADDRESS: source.peer,
            },
        )
        item = _Item(span, trace.set_span_in_context(span, self._parent))
        self._items.append(item)
        token = otel_context.attach(item.context)
        try:
            self._stage(item, path, header)
        except BaseException as exc:
            self._discard(item)
            self._fail(item, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            otel_context.detach(token)
        return len(self._items) - 1

    def commit(self) -> list[Outcome]:
        """Make every staged instance durable in one go; one outcome per `add`, in order."""
        if self._done:
            raise RuntimeError("this ingest batch is already committed or abandoned")
        self._done = True
        staged = [item for item in self._items if item.outcome is None]
        if staged:
            self._commit(staged)
        return [_outcome(item) for item in self._items]

    def abandon(self, reason: str) -> None:
        """Give up before `commit`: remove what was spooled; nothing was recorded."""
        if self._done:
            return
        self._done = True
        for item in self._items:
            if item.outcome is None:
                self._discard(item)
                self._fail(item, StoreError(f"not committed: {reason}"))

    # -- steps --------------------------------------------------------------------------------

    def _stage(self, item: _Item, path: Path, header: InstanceHeader | None) -> None:
        """Steps 1-3 for one instance, inside its ingest span."""
        ingestor, source, settings = self._ingestor, self._source, self._ingestor._settings
        telemetry = ingestor._telemetry
        if header is None:
            try:
                header = read_header(path)
            except InvalidInputError as exc:
                self._refused(None, str(exc))
                raise
        item.header = header
        for note in header.notes:
            log.warning("instance from %s (%s): %s", source.who, source.door, note)
        received_at = ingestor._clock()
        context = RoutingContext(
            source=source.door,
            calling_ae=source.calling_ae,
            called_ae=source.called_ae,
            site=settings.node.site,
            received_at=datetime.fromtimestamp(received_at, tz=UTC),
        )
        with telemetry.span("routing") as routing:
            decision = evaluate(
                settings.routes, header.dataset, context, default=settings.routing_default
            )
            if routing.is_recording():
                rules = sorted({target.rule for target in decision.targets})
                set_attributes(routing, {RULE: rules, "gateway.held": decision.held})
        item.decision = decision
        # Read everything we need from the header before the file moves into the spool
        # (deferred values are read from the original path).
        attributes = indexed_values(header.dataset)
        key = spool_key(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        spool = ingestor._spool
        with telemetry.span("spool write") as spooling:
            try:
                stored = spool.put_deferred(path, key) if self._group else spool.put(path, key)
            except BaseException:
                ingestor._discard(key)  # a rename may have happened before the failure
                raise
            set_attributes(spooling, {BYTES: stored.size})
        item.stored = stored
        item.new = NewInstance(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            attributes=attributes,
            spool_key=stored.key,
            size=stored.size,
            sha256=stored.sha256,
            source=source.door,
            calling_ae=source.calling_ae,
            called_ae=source.called_ae,
            peer=source.peer,
            received_at=received_at,
            decision=decision,
            trace_context=traceparent_of(item.span) or self._trace_context,
        )

    def _commit(self, staged: list[_Item]) -> None:
        """Step 4 (and the deferred part of step 3) for every staged instance at once."""
        ingestor = self._ingestor
        settings = ingestor._settings
        telemetry = ingestor._telemetry
        spans = [telemetry.start_span("database commit", parent=item.context) for item in staged]
        try:
            if self._group:
                ingestor._spool.sync([_stored_object(item).key for item in staged])
            recorded = record_instances(
                ingestor._db,
                [_new(item) for item in staged],
                duplicate_policy=settings.ingest.duplicate_policy,
                actor=self._source.who,
                garbage_delay=settings.delivery.lease_seconds * 2,
            )
        except BaseException as exc:
            for span in spans:
                end_span(span, exc)
            for item in staged:
                self._discard(item)
                self._fail(item, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for span in spans:
            end_span(span)
        for item, outcome in zip(staged, recorded, strict=True):
            if isinstance(outcome, InvalidInputError):
                self._discard(item)
                token = otel_context.attach(item.context)
                try:
                    self._refused(item.header, str(outcome))
                finally:
                    otel_context.detach(token)
                self._fail(item, outcome)
            else:
                self._finish(item, outcome)

    def _finish(self, item: _Item, recorded: Recorded) -> None:
        """Finish one committed instance: tidy the spool, log, notify, close its span."""
        ingestor, source = self._ingestor, self._source
        stored, header, decision = _stored_object(item), item.header, item.decision
        assert header is not None and decision is not None
        if recorded.outcome in (IngestOutcome.IDENTICAL, IngestOutcome.IGNORED):
            self._discard(item)
        result = IngestResult(
            instance_id=recorded.instance_id,
            header=header,
            outcome=recorded.outcome,
            decision=decision,
            size=stored.size,
            sha256=stored.sha256,
        )
        item.outcome = result
        token = otel_context.attach(item.context)
        try:
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "stored %s from %s (%s): %s -> %s",
                    header.sop_instance_uid,
                    source.who,
                    source.door,
                    recorded.outcome.value,
                    ", ".join(t.destination for t in decision.targets) or "held",
                    extra={"fields": ingestor._log_fields(source, result)},
                )
            if ingestor._on_stored is not None:
                try:
                    ingestor._on_stored(result)
                except Exception:  # the instance is stored: a failed wake-up must not refuse it
                    log.exception("on_stored callback failed for %s", header.sop_instance_uid)
        finally:
            otel_context.detach(token)
        set_attributes(
            item.span,
            {
                STUDY_UID: header.study_instance_uid,
                SERIES_UID: header.series_instance_uid,
                SOP_UID: header.sop_instance_uid,
                BYTES: result.size,
                OUTCOME: result.outcome.value,
            },
        )
        ingestor._telemetry.metrics.received(source.door, source.calling_ae)
        end_span(item.span)

    def _fail(self, item: _Item, error: BaseException) -> None:
        # Interrupted (KeyboardInterrupt, cancellation): the instance is not stored either.
        interrupted = StoreError(f"interrupted: {error!r}")
        item.outcome = error if isinstance(error, Exception) else interrupted
        self._ingestor._telemetry.metrics.refused(self._source.door)
        end_span(item.span, error)

    def _discard(self, item: _Item) -> None:
        if item.stored is not None:
            self._ingestor._discard(item.stored.key)

    def _refused(self, header: InstanceHeader | None, reason: str) -> None:
        self._ingestor._refused(self._source, header, reason)


def _stored_object(item: _Item) -> StoredObject:
    assert item.stored is not None
    return item.stored


def _new(item: _Item) -> NewInstance:
    assert item.new is not None
    return item.new


def _outcome(item: _Item) -> Outcome:
    assert item.outcome is not None
    return item.outcome
