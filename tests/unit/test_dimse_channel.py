"""The message-service seam of the association loop, against pynetdicom as the peer.

A small service answers C-FIND with pending responses and C-GET with a C-STORE sub-operation
on the same association, so the channel's framing (command and data set fragments within the
peer's maximum PDU, responses read back, C-CANCEL noticed) is checked against a real DICOM
implementation rather than against itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
)

from gateway.db import open_database
from gateway.db.events import audit
from gateway.dicom.structure import data_set_offset
from gateway.dimse.ae import Limits
from gateway.dimse.association import Association
from gateway.dimse.channel import C_FIND_RQ, MessageChannel, Request
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.listener import DimseListener
from gateway.ingest import Ingestor
from gateway.spool.filesystem import FilesystemSpool
from tests.unit.test_ingest import make_file, settings

FIND = str(PatientRootQueryRetrieveInformationModelFind)
GET = str(PatientRootQueryRetrieveInformationModelGet)


class EchoingService:
    """C-FIND: one pending answer per name in the identifier; C-GET: stores one file."""

    sop_classes = frozenset({FIND, GET})

    def __init__(self, file: Path) -> None:
        self.file = file
        self.cancelled = False

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> None:
        identifier = request.identifier()
        if request.command_field == C_FIND_RQ:
            for name in str(identifier.PatientName).split("^"):
                if channel.cancelled(request.message_id):
                    self.cancelled = True
                    channel.respond(request, 0xFE00)
                    return
                answer = Dataset()
                answer.PatientName = name
                answer.QueryRetrieveLevel = "PATIENT"
                channel.respond(request, 0xFF00, answer)
            channel.respond(request, 0x0000)
            return
        context = next(cx for cx in channel.contexts.values() if cx.as_scu)
        with self.file.open("rb") as stream:
            stream.seek(data_set_offset(stream))
            response = channel.send_c_store(context.context_id, CTImageStorage, "1.2.3.4.5", stream)
        status = int(response.command.Status)
        channel.respond(
            request,
            0x0000 if status == 0 else 0xB000,
            NumberOfCompletedSuboperations=1 if status == 0 else 0,
            NumberOfFailedSuboperations=0 if status == 0 else 1,
            NumberOfWarningSuboperations=0,
            NumberOfRemainingSuboperations=0,
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, EchoingService]]:
    config = settings(tmp_path)
    db = open_database(config.storage.database)
    ingestor = Ingestor(config, FilesystemSpool(tmp_path / "spool"), db)
    file = make_file(tmp_path / "files", sop_uid="1.2.3.4.5")
    large = dcmread(file)
    large.PixelData = bytes(range(256)) * 1200  # ~300 KB: many fragments at a 4 KiB PDU
    large.save_as(file, enforce_file_format=True)
    service = EchoingService(file)
    handlers = DimseHandlers(config, ingestor, partial(audit, db), services=[service])
    listener = DimseListener(
        ("127.0.0.1", 0),
        services=handlers,
        limits=Limits(max_pdu=16384, acse_timeout=5, network_timeout=5),
        staging_dir=ingestor.staging_dir,
        max_associations=2,
    )
    listener.start()
    yield listener.server_address[1], service
    listener.shutdown()
    db.close()


def test_find_answers_pending_then_success(served: tuple[int, EchoingService]) -> None:
    port, _service = served
    ae = AE(ae_title="SCU")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientName = "ONE^TWO^THREE"
    answers = list(assoc.send_c_find(query, FIND))
    assoc.release()
    statuses = [int(status.Status) for status, _ in answers]
    assert statuses == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert [str(ds.PatientName) for _, ds in answers[:3]] == ["ONE", "TWO", "THREE"]


def test_get_sends_a_c_store_on_the_same_association(
    served: tuple[int, EchoingService], tmp_path: Path
) -> None:
    port, service = served
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="SCU")
    ae.maximum_pdu_size = 4096  # several fragments per data set
    ae.add_requested_context(GET)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role = False
    role.scp_role = True
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="GATEWAY",
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "X"
    answers = list(assoc.send_c_get(query, GET))
    assoc.release()
    assert [int(status.Status) for status, _ in answers][-1] == 0x0000
    assert int(answers[-1][0].NumberOfCompletedSuboperations) == 1
    with service.file.open("rb") as stream:
        stream.seek(data_set_offset(stream))
        assert received == [stream.read()]
