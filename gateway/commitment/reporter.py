"""The reporter thread: decide due transactions and send their N-EVENT-REPORTs.

It leases due transactions (gateway/db/commitments.py), decides each (decide.py) and, once
nothing is waiting any more or the transaction's deadline has passed, opens a new association
to the address configured for the requesting AE title and sends the report. The gateway is the
association requestor there but the SCP of the Storage Commitment Push Model SOP class, so it
proposes SCP/SCU role selection (SCU role 0, SCP role 1; PS3.4 J.3.3). A peer that cannot be
reached, rejects the association or answers with a failure status is tried again with
exponential backoff (tenacity's full jitter, as deliveries are) until `retry.max_attempts` or
`retry.max_age_hours` since the request; then the transaction is recorded as failed.

Because the table is the only state, a restarted gateway resumes every pending transaction; a
lease held by a reporter that died expires after `lease_seconds`.

Each attempt is a CLIENT span parented on the N-ACTION span's persisted `traceparent`
(`commitments.trace_context`), as delivery attempts are parented on ingest: the request and
every attempt to report it are one trace, whichever replica reports and however late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

from gateway.commitment.decide import evaluate
from gateway.commitment.settings import CommitmentPeer, CommitmentSettings
from gateway.db import Database
from gateway.db.commitments import (
    CommitmentResult,
    Settled,
    Transaction,
    lease_due,
    release,
    settle_report,
    wait,
)
from gateway.exceptions import GatewayError
from gateway.forward.backoff import give_up_reason, retry_delay
from gateway.telemetry import (
    ATTEMPT,
    CALLED_AE,
    CALLING_AE,
    COMMITTED,
    EVENT_TYPE,
    NOT_COMMITTED,
    OUTCOME,
    PEER_ADDRESS,
    REASON,
    TRANSACTION_UID,
    Telemetry,
    context_from_traceparent,
    mark_error,
    set_attributes,
)

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one report attempt went."""

    reported: bool
    detail: str


ReportSender = Callable[[CommitmentPeer, str, str, CommitmentResult], Delivery]
"""(peer, our calling AE title, transaction UID, result) -> how the attempt went."""


def event_information(transaction_uid: str, result: CommitmentResult) -> Dataset:
    """The N-EVENT-REPORT Event Information (PS3.4 Table J.3-2)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if result.committed:
        info.ReferencedSOPSequence = DicomSequence(
            [_item(i.sop_class_uid, i.sop_instance_uid) for i in result.committed]
        )
    if result.failed:
        failed = []
        for failure in result.failed:
            item = _item(failure.instance.sop_class_uid, failure.instance.sop_instance_uid)
            item.FailureReason = failure.reason
            failed.append(item)
        info.FailedSOPSequence = DicomSequence(failed)
    return info


def _item(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


class EventReportSender:
    """Sends one N-EVENT-REPORT per association with pynetdicom; the one place its outcomes
    become a `Delivery`."""

    def __init__(self, settings: CommitmentSettings) -> None:
        from gateway.dimse.ae import client_ssl_context

        self._settings = settings
        # Built now, so a wrong certificate or key stops the start with a ConfigError.
        self._tls = {
            peer.ae_title: client_ssl_context(
                peer.tls, f"dimse.storage_commitment.peers.{peer.ae_title}.tls"
            )
            for peer in settings.peers.values()
            if peer.tls is not None
        }

    def __call__(
        self, peer: CommitmentPeer, calling_ae: str, transaction_uid: str, result: CommitmentResult
    ) -> Delivery:
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = self._settings.acse_timeout
        ae.connection_timeout = self._settings.acse_timeout
        ae.dimse_timeout = self._settings.dimse_timeout
        ae.network_timeout = self._settings.dimse_timeout
        context = build_context(
            STORAGE_COMMITMENT_PUSH, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = STORAGE_COMMITMENT_PUSH
        role.scu_role = False
        role.scp_role = True
        context_tls = self._tls.get(peer.ae_title)
        tls = None if context_tls is None else (context_tls, peer.host)
        try:
            assoc = ae.associate(
                peer.host,
                peer.port,
                contexts=[context],
                ae_title=peer.ae_title,
                ext_neg=[role],
                tls_args=tls,
            )
        except Exception as exc:  # pynetdicom raises what its sockets and encoders meet
            return Delivery(False, f"cannot associate with {where}: {exc}")
        try:
            if assoc.is_rejected:
                return Delivery(False, f"{where} rejected the association")
            if not assoc.is_established:
                return Delivery(False, f"cannot associate with {where} (refused or no answer)")
            if not assoc.accepted_contexts:
                return Delivery(False, f"{where} accepted no Storage Commitment context")
            status, _reply = assoc.send_n_event_report(
                event_information(transaction_uid, result),
                result.event_type,
                STORAGE_COMMITMENT_PUSH,
                STORAGE_COMMITMENT_INSTANCE,
            )
            if "Status" not in status:
                return Delivery(False, f"no N-EVENT-REPORT response from {where}")
            code = int(status.Status)
            if code == 0x0000 or code == 0x0001 or 0xB000 <= code <= 0xBFFF:
                return Delivery(True, f"{where} answered 0x{code:04X}")
            return Delivery(False, f"{where} answered the N-EVENT-REPORT with 0x{code:04X}")
        except Exception as exc:
            return Delivery(False, f"sending the N-EVENT-REPORT to {where} failed: {exc}")
        finally:
            if assoc.is_established:
                assoc.release()
            if not assoc.is_released:
                assoc.abort()


class CommitmentReporter:
    """Decides and reports storage commitment transactions until stopped (one thread)."""

    def __init__(
        self,
        *,
        settings: CommitmentSettings,
        db: Database,
        owner: str,
        stop: threading.Event,
        wake: threading.Event | None = None,
        send: ReportSender | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self.owner = owner
        self._stop = stop
        self._wake = wake if wake is not None else stop
        self._send: ReportSender = send if send is not None else EventReportSender(settings)
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()
        # Long enough for one attempt (connect, associate, exchange, release); the lease of a
        # reporter that died expires after this and another reporter (or this one,
        # restarted) takes the transaction over.
        self.lease_seconds = 3 * settings.acse_timeout + settings.dimse_timeout + 10
        self._thread = threading.Thread(target=self._run, name=f"{owner}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        log.info("storage commitment reporter %s started", self.owner)
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except GatewayError as exc:
                log.error("storage commitment reporter: %s", exc)
                worked = False
            except Exception:
                log.exception("storage commitment reporter: unexpected error")
                worked = False
            if not worked:
                self._wake.wait(self._settings.poll_interval)
                if self._wake is not self._stop:
                    self._wake.clear()
        log.info("storage commitment reporter %s stopped", self.owner)

    def run_once(self, now: float | None = None) -> bool:
        """Handle one due transaction; False when none was due.

        One at a time: a report to a slow or unreachable peer can take up to the lease time,
        and a transaction leased behind it would see its lease expire (and be taken over by
        another replica) before its turn.
        """
        leased = lease_due(self._db, self.owner, lease_seconds=self.lease_seconds, limit=1, now=now)
        for index, transaction in enumerate(leased):
            if self._stop.is_set():
                release(self._db, self.owner, [t.id for t in leased[index:]])
                break
            try:
                self._handle(transaction, time.time() if now is None else now)
            except Exception:
                # Give it back for a later look; the others in this lease still go on.
                log.exception(
                    "storage commitment %s could not be handled", transaction.transaction_uid
                )
                wait(
                    self._db,
                    self.owner,
                    transaction.id,
                    until=time.time() + 10 * self._settings.poll_interval,
                    detail="an internal error; see the log",
                )
        return bool(leased)

    def _handle(self, transaction: Transaction, now: float) -> None:
        result = transaction.result
        if result is None:
            evaluation = evaluate(self._db, transaction.items, self._settings.policy)
            if evaluation.waiting and now < transaction.deadline_at:
                until = min(transaction.deadline_at, now + self._settings.poll_interval)
                wait(
                    self._db,
                    self.owner,
                    transaction.id,
                    until=until,
                    detail=f"waiting for {len(evaluation.waiting)} of "
                    f"{len(transaction.items)} instance(s)",
                )
                return
            result = evaluation.result()
        peer = self._settings.peers.get(transaction.calling_ae)
        if peer is None:
            detail = (
                f"no report address for {transaction.calling_ae} in "
                "dimse.storage_commitment.peers any more"
            )
            self._settle(transaction, result, Settled.FAILED, detail, "-")
            return
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        outcome = self._attempt(peer, transaction, result)
        if outcome.reported:
            log.info(
                "storage commitment %s reported to %s: event type %d, %d committed, %d failed",
                transaction.transaction_uid,
                where,
                result.event_type,
                len(result.committed),
                len(result.failed),
            )
            self._settle(transaction, result, Settled.REPORTED, outcome.detail, where)
            return
        attempt = transaction.attempts + 1
        gave_up = give_up_reason(
            self._settings.retry, attempt=attempt, age_seconds=now - transaction.requested_at
        )
        if gave_up is not None:
            log.error(
                "storage commitment %s for %s not reported, %s: %s",
                transaction.transaction_uid,
                where,
                gave_up,
                outcome.detail,
            )
            self._settle(transaction, result, Settled.FAILED, f"{gave_up}: {outcome.detail}", where)
            return
        delay = retry_delay(self._settings.retry, attempt)
        log.warning(
            "storage commitment %s: report attempt %d failed (%s); next in %.1f s",
            transaction.transaction_uid,
            attempt,
            outcome.detail,
            delay,
        )
        self._settle(
            transaction, result, Settled.RETRY, outcome.detail, where, retry_at=now + delay
        )

    def _attempt(
        self, peer: CommitmentPeer, transaction: Transaction, result: CommitmentResult
    ) -> Delivery:
        """One report attempt, as a CLIENT span that is a child of the N-ACTION's span."""
        with self._telemetry.span(
            "DIMSE N-EVENT-REPORT",
            kind=SpanKind.CLIENT,
            # No persisted context (a transaction recorded before migration 6): a new trace.
            parent=context_from_traceparent(transaction.trace_context)
            or trace.set_span_in_context(trace.INVALID_SPAN),
            attributes={
                TRANSACTION_UID: transaction.transaction_uid,
                CALLING_AE: transaction.called_ae,
                CALLED_AE: peer.ae_title,
                PEER_ADDRESS: peer.host,
                EVENT_TYPE: result.event_type,
                COMMITTED: len(result.committed),
                NOT_COMMITTED: len(result.failed),
                ATTEMPT: transaction.attempts + 1,
            },
        ) as span:
            outcome = self._send(peer, transaction.called_ae, transaction.transaction_uid, result)
            reported = "reported" if outcome.reported else "failed"
            set_attributes(span, {OUTCOME: reported, REASON: outcome.detail})
            if not outcome.reported:
                mark_error(span, outcome.detail)
            return outcome

    def _settle(
        self,
        transaction: Transaction,
        result: CommitmentResult,
        outcome: Settled,
        detail: str,
        peer: str,
        *,
        retry_at: float | None = None,
    ) -> None:
        if not settle_report(
            self._db,
            self.owner,
            transaction,
            result,
            outcome,
            detail=detail,
            peer=peer,
            retry_at=retry_at,
        ):
            log.warning(
                "storage commitment %s: the lease expired before it was settled",
                transaction.transaction_uid,
            )
