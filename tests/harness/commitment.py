"""A modality that asks for storage commitment: pynetdicom as the Storage Commitment SCU.

DCMTK has no storage commitment SCU tool, so the modality is pynetdicom, a DICOM
implementation independent of the gateway's own listener: it sends N-ACTION on one
association and receives the N-EVENT-REPORT on its own listener (a new association the
gateway opens, proposing the SCP role for the SOP class), as modalities do.
"""

from __future__ import annotations

import queue
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from .process import LOOPBACK

__all__ = ["Modality", "Report", "action_information"]

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT the modality received."""

    event_type: int
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]
    calling_ae: str
    roles: tuple[bool, bool]  # (the gateway as SCU, the gateway as SCP) as negotiated


def action_information(
    transaction_uid: str | None, items: Sequence[tuple[str, str]] | None
) -> Dataset:
    """Action Information of a Request Storage Commitment; invalid values are allowed."""
    info = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tests send invalid UIDs on purpose
        if transaction_uid is not None:
            info.TransactionUID = transaction_uid
        if items is not None:
            sequence = []
            for sop_class, sop_instance in items:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop_instance
                sequence.append(item)
            info.ReferencedSOPSequence = sequence
    return info


class Modality:
    """`ae_title` sending N-ACTION, and listening on `port` for N-EVENT-REPORTs."""

    def __init__(self, ae_title: str, port: int, *, answer: int = 0x0000) -> None:
        self.ae_title = ae_title
        self.port = port
        self.answer = answer  # the status the listener answers N-EVENT-REPORTs with
        self.reports: queue.Queue[Report] = queue.Queue()
        self._server: Any = None

    # -- the listener ------------------------------------------------------------------------

    def listen(self, ssl_context: ssl.SSLContext | None = None) -> Modality:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self._server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
            ssl_context=ssl_context,
        )
        return self

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        info = event.event_information
        context = next(
            cx
            for cx in event.assoc.accepted_contexts
            if cx.abstract_syntax == StorageCommitmentPushModel
        )
        self.reports.put(
            Report(
                event_type=int(event.event_type),
                transaction_uid=str(info.TransactionUID),
                committed=[
                    (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                    for i in info.get("ReferencedSOPSequence", [])
                ],
                failed=[
                    (
                        str(i.ReferencedSOPClassUID),
                        str(i.ReferencedSOPInstanceUID),
                        int(i.FailureReason),
                    )
                    for i in info.get("FailedSOPSequence", [])
                ],
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
                # The acceptor's view: as_scu means we (the modality) act as SCU.
                roles=(bool(context.as_scp), bool(context.as_scu)),
            )
        )
        return self.answer, None

    def report(self, timeout: float) -> Report:
        """The next report; raises queue.Empty after `timeout` seconds without one."""
        return self.reports.get(timeout=timeout)

    # -- the requests ------------------------------------------------------------------------

    def request(
        self,
        port: int,
        items: Sequence[tuple[str, str]] | None,
        *,
        transaction_uid: str | None = "",
        called_ae: str = "GATEWAY",
        action_type: int = 1,
        instance_uid: str = WELL_KNOWN_INSTANCE,
        info: Dataset | None = None,
        send_info: bool = True,
    ) -> tuple[Dataset, str | None]:
        """Send one N-ACTION; (response status data set, transaction UID used)."""
        if transaction_uid == "":
            transaction_uid = generate_uid()
        if info is None and send_info:
            info = action_information(transaction_uid, items)
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
        assert assoc.is_established, "the gateway did not accept the association"
        try:
            status, _reply = assoc.send_n_action(
                info, action_type, StorageCommitmentPushModel, instance_uid
            )
        finally:
            assoc.release()
        return status, transaction_uid
