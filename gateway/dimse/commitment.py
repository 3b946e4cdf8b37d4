"""Storage Commitment Push Model SCP on the listener: N-ACTION Request Storage Commitment.

The request is checked (PS3.4 J.3.2: Action Type ID 1, the well-known SOP instance, a valid
Transaction UID and Referenced SOP Sequence items with valid UIDs), then persisted with its
audit event (gateway/db/commitments.py) and only then answered Success; a refused request is
answered with a failure status whose Error Comment names the problem, and writes nothing. The
result follows later as an N-EVENT-REPORT on a new association (gateway/commitment/reporter.py),
never on this one. The request's span context is persisted with it, so the report's span, sent
by whichever replica and after however many restarts, is its child in the same trace.

Values are read from the raw elements and checked against the UID grammar here, not through
pydicom's value conversion, so a hostile value is refused with a status instead of a warning or
a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

from gateway.commitment.reporter import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from gateway.commitment.settings import CommitmentSettings
from gateway.db import Database
from gateway.db.commitments import CommitmentRequest, ReferencedInstance, record_request
from gateway.db.events import audit
from gateway.dicom.uids import is_valid_uid
from gateway.dimse.association import Association
from gateway.dimse.channel import N_ACTION_RQ, MessageChannel, Request
from gateway.dimse.tracing import describe_commitment
from gateway.exceptions import InvalidInputError, StoreError
from gateway.telemetry import traceparent_of

log = logging.getLogger(__name__)

ACTION_REQUEST_STORAGE_COMMITMENT = 1
MAX_ITEMS = 10_000  # Referenced SOP Sequence items per request

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NO_SUCH_SOP_INSTANCE = 0x0112
STATUS_INVALID_ARGUMENT = 0x0115
STATUS_NO_SUCH_SOP_CLASS = 0x0118
STATUS_UNRECOGNISED_OPERATION = 0x0211
STATUS_NO_SUCH_ACTION = 0x0123
STATUS_NOT_AUTHORIZED = 0x0124

_TRANSACTION_UID = 0x00081195
_REFERENCED_SOP_SEQUENCE = 0x00081199
_REFERENCED_SOP_CLASS = 0x00081150
_REFERENCED_SOP_INSTANCE = 0x00081155


class StorageCommitmentService:
    """The `MessageService` of the Storage Commitment Push Model SOP class."""

    sop_classes = frozenset({STORAGE_COMMITMENT_PUSH})

    def __init__(
        self,
        settings: CommitmentSettings,
        db: Database,
        *,
        on_recorded: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._db = db
        self._on_recorded = on_recorded
        self._clock = clock

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> None:
        echoed: dict[str, Any] = {}
        action = _action_type(request.command)
        if action is not None:
            echoed["ActionTypeID"] = action
        try:
            commitment = self._request(association, request)
            outcome = record_request(self._db, commitment)
        except InvalidInputError as exc:
            describe_commitment(None, None, exc.dicom_status)
            self._refused(association, exc)
            channel.respond(request, exc.dicom_status, ErrorComment=str(exc), **echoed)
            return
        except StoreError as exc:
            describe_commitment(
                commitment.transaction_uid, len(commitment.items), STATUS_PROCESSING_FAILURE
            )
            log.error("could not record storage commitment %s: %s", commitment.transaction_uid, exc)
            channel.respond(
                request,
                STATUS_PROCESSING_FAILURE,
                ErrorComment="gateway database unavailable; ask again later",
                **echoed,
            )
            return
        log.info(
            "storage commitment %s %s from %s@%s: %d instance(s), deadline in %g s",
            commitment.transaction_uid,
            outcome.value,
            association.calling_ae,
            association.peer,
            len(commitment.items),
            self._settings.timeout,
        )
        describe_commitment(commitment.transaction_uid, len(commitment.items), STATUS_SUCCESS)
        channel.respond(request, STATUS_SUCCESS, **echoed)
        if self._on_recorded is not None:
            self._on_recorded()

    def _refused(self, association: Association, exc: InvalidInputError) -> None:
        log.warning(
            "refused N-ACTION (storage commitment) from %s@%s with 0x%04X: %s",
            association.calling_ae,
            association.peer,
            exc.dicom_status,
            exc,
        )
        try:
            audit(
                self._db,
                "commitment.refused",
                outcome="refused",
                actor=association.calling_ae,
                detail={
                    "peer": association.peer,
                    "status": f"0x{exc.dicom_status:04X}",
                    "reason": str(exc),
                },
            )
        except StoreError as error:
            log.error("could not audit a refused storage commitment request: %s", error)

    # -- checks --------------------------------------------------------------------------

    def _request(self, association: Association, request: Request) -> CommitmentRequest:
        """The validated request; raises InvalidInputError with the status to answer."""
        command = request.command
        if request.command_field != N_ACTION_RQ:
            raise InvalidInputError(
                "only N-ACTION is served for Storage Commitment",
                dicom_status=STATUS_UNRECOGNISED_OPERATION,
            )
        if _text(command.get_item(0x00000003)) != STORAGE_COMMITMENT_PUSH:
            raise InvalidInputError(
                "Requested SOP Class is not Storage Commitment Push Model",
                dicom_status=STATUS_NO_SUCH_SOP_CLASS,
            )
        if _text(command.get_item(0x00001001)) != STORAGE_COMMITMENT_INSTANCE:
            raise InvalidInputError(
                f"Requested SOP Instance is not {STORAGE_COMMITMENT_INSTANCE}",
                dicom_status=STATUS_NO_SUCH_SOP_INSTANCE,
            )
        action = _action_type(command)
        if action != ACTION_REQUEST_STORAGE_COMMITMENT:
            raise InvalidInputError(
                f"Action Type ID {action} is not 1 (Request Storage Commitment)",
                dicom_status=STATUS_NO_SUCH_ACTION,
            )
        if association.calling_ae not in self._settings.peers:
            raise InvalidInputError(
                f"no report address for {association.calling_ae} (dimse.storage_commitment.peers)",
                dicom_status=STATUS_NOT_AUTHORIZED,
            )
        transaction_uid, items = _action_information(request)
        now = self._clock()
        return CommitmentRequest(
            transaction_uid=transaction_uid,
            calling_ae=association.calling_ae,
            called_ae=association.called_ae,
            peer=association.peer,
            items=items,
            requested_at=now,
            deadline_at=now + self._settings.timeout,
            # The N-ACTION span (gateway/dimse/tracing.py): the report's span is its child.
            trace_context=traceparent_of(),
        )


def _action_type(command: Dataset) -> int | None:
    try:
        value = command.get("ActionTypeID")
    except Exception:  # a malformed US value: pydicom raises what its converters meet
        return None
    return value if isinstance(value, int) else None


def _action_information(request: Request) -> tuple[str, tuple[ReferencedInstance, ...]]:
    if request.data_set is None:
        raise InvalidInputError(
            "no Action Information (Transaction UID, Referenced SOP Sequence)",
            dicom_status=STATUS_INVALID_ARGUMENT,
        )
    try:
        info = request.identifier()
        transaction_uid = _uid(info, _TRANSACTION_UID, "Transaction UID")
        if _REFERENCED_SOP_SEQUENCE not in info:
            raise InvalidInputError(
                "Referenced SOP Sequence missing", dicom_status=STATUS_INVALID_ARGUMENT
            )
        sequence = info[_REFERENCED_SOP_SEQUENCE]
        if sequence.VR != "SQ" or not sequence.value:
            raise InvalidInputError(
                "Referenced SOP Sequence empty or not a sequence",
                dicom_status=STATUS_INVALID_ARGUMENT,
            )
        if len(sequence.value) > MAX_ITEMS:
            raise InvalidInputError(
                f"more than {MAX_ITEMS} Referenced SOP Sequence items",
                dicom_status=STATUS_INVALID_ARGUMENT,
            )
        items: dict[ReferencedInstance, None] = {}
        for number, item in enumerate(sequence.value, start=1):
            if not isinstance(item, Dataset):
                raise InvalidInputError(
                    f"Referenced SOP Sequence item {number} is not an item",
                    dicom_status=STATUS_INVALID_ARGUMENT,
                )
            sop_class = _uid(item, _REFERENCED_SOP_CLASS, f"item {number}: SOP Class UID")
            sop_instance = _uid(item, _REFERENCED_SOP_INSTANCE, f"item {number}: SOP Instance UID")
            items[ReferencedInstance(sop_class, sop_instance)] = None  # once each, in order
    except InvalidInputError:
        raise
    except Exception as exc:  # pydicom (and the channel) raise what their parsers meet
        raise InvalidInputError(
            f"unreadable Action Information ({type(exc).__name__})",
            dicom_status=STATUS_INVALID_ARGUMENT,
        ) from exc
    return transaction_uid, tuple(items)


def _uid(data_set: Dataset, tag: int, what: str) -> str:
    if tag not in data_set:
        raise InvalidInputError(f"{what} missing", dicom_status=STATUS_INVALID_ARGUMENT)
    value = _text(data_set.get_item(tag))
    if value is None or not is_valid_uid(value):
        raise InvalidInputError(f"{what} is not a valid UID", dicom_status=STATUS_INVALID_ARGUMENT)
    return value


def _text(element: Any) -> str | None:
    """A raw (or converted) element's value as text, padding removed; None if absent."""
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        return None
    return value.rstrip("\x00 ")
