"""The listener's association loop in-process, with real ingest (SQLite + folder spool).

Peers are pynetdicom (as a modality would be) and hand-built PDUs for what a well-behaved SCU
never sends: a C-FIND on a storage context, a PDV on a context that was not accepted, a
release in the middle of a data set.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_FIND_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from gateway.auditlog import recent_events
from gateway.db import Database, open_database
from gateway.db.events import audit
from gateway.db.instances import instance_by_sop
from gateway.dimse.ae import start_listener
from gateway.dimse.listener import DimseListener
from gateway.ingest import Ingestor
from gateway.spool.filesystem import FilesystemSpool
from tests.unit.test_ingest import make_file, settings

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
FIND = "1.2.840.10008.5.1.4.1.2.1.1"


class Gateway:
    def __init__(self, tmp_path: Path, max_associations: int = 4) -> None:
        self.settings = settings(tmp_path, dimse={"max_associations": max_associations})
        self.db: Database = open_database(self.settings.storage.database)
        self.spool = FilesystemSpool(tmp_path / "spool")
        self.ingestor = Ingestor(self.settings, self.spool, self.db)
        self.listener: DimseListener = start_listener(
            self.settings, self.ingestor, partial(audit, self.db)
        )
        self.port = self.listener.server_address[1]

    def events(self, actor: str) -> list[str]:
        return [str(row["kind"]) for row in recent_events(self.db, actor=actor)]

    def staging_leftovers(self) -> list[Path]:
        return [p for p in self.ingestor.staging_dir.iterdir() if p.is_file()]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    running = Gateway(tmp_path)
    yield running
    running.listener.shutdown()
    running.db.close()


def _eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_echo_and_store_from_pynetdicom(gateway: Gateway, tmp_path: Path) -> None:
    path = make_file(tmp_path / "src")
    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="CT1")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(dataset).Status == 0
    assoc.release()
    row = instance_by_sop(gateway.db, dataset.SOPInstanceUID)
    assert row is not None
    stored = pydicom.dcmread(gateway.spool.root / str(row["spool_key"]))
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.PatientName == dataset.PatientName
    assert _eventually(lambda: "association.released" in gateway.events("CT1"))
    assert gateway.events("CT1")[0] == "association.accepted"
    assert gateway.staging_leftovers() == []


# -- hand-built PDUs ----------------------------------------------------------------------


def _associate(port: int, contexts: list[tuple[str, str]]) -> socket.socket:
    primitive = A_ASSOCIATE()
    primitive.calling_ae_title = "RAW"
    primitive.called_ae_title = "GATEWAY"
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    items = []
    for number, (abstract, syntax) in enumerate(contexts):
        item = build_context(abstract, [syntax])
        item.context_id = 1 + 2 * number
        items.append(item)
    primitive.presentation_context_definition_list = items
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(pdu.encode())
    kind, _ = _read_pdu(sock)
    assert kind == 0x02, "association not accepted"
    return sock


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _exactly(sock, 6)
    kind, length = struct.unpack(">BxL", header)
    return kind, _exactly(sock, length)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _command_bytes(message: C_STORE_RQ | C_FIND_RQ) -> bytes:
    (first, *_) = message.encode_msg(1, 16384)
    return bytes(first.presentation_data_value_list[0][1][1:])


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    item = struct.pack(">LBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxL", 0x04, len(item)) + item


def _status(sock: socket.socket) -> int:
    kind, body = _read_pdu(sock)
    assert kind == 0x04
    response = pydicom.filereader.read_dataset(  # type: ignore[attr-defined]
        io.BytesIO(body[6:]), is_implicit_VR=True, is_little_endian=True
    )
    return int(response.Status)


def _find_request() -> bytes:
    primitive = C_FIND()
    primitive.MessageID = 3
    primitive.AffectedSOPClassUID = FIND
    primitive.Priority = 0
    primitive.Identifier = io.BytesIO(b"")
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    return _command_bytes(message)


def _store_request(sop_class: str, sop_instance: str) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = 5
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 0
    primitive.DataSet = io.BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _command_bytes(message)


def _data_set() -> bytes:
    ds = Dataset()
    ds.PatientName = "RAW^PEER"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_an_operation_we_do_not_serve_is_answered_and_the_association_goes_on(
    gateway: Gateway,
) -> None:
    with _associate(gateway.port, [(CT, ImplicitVRLittleEndian)]) as sock:
        sock.sendall(
            _pdv(1, 0x03, _find_request()) + _pdv(1, 0x02, b"\x10\x00\x10\x00\x00\x00\x00\x00")
        )
        assert _status(sock) == 0x0211
        sock.sendall(_pdv(1, 0x03, _store_request(MR, "1.2.3.9")) + _pdv(1, 0x02, _data_set()))
        assert _status(sock) == 0x0122  # an MR on the CT context
        sock.sendall(_pdv(1, 0x03, _store_request(CT, "1.2.3/../x")) + _pdv(1, 0x02, _data_set()))
        assert _status(sock) == 0xC000  # not a UID: never names a file
        sock.sendall(struct.pack(">BxL", 0x05, 4) + bytes(4))
        assert _read_pdu(sock)[0] == 0x06
    assert gateway.staging_leftovers() == []


def test_a_pdv_on_a_context_that_was_not_accepted_aborts(gateway: Gateway) -> None:
    with _associate(gateway.port, [(CT, ImplicitVRLittleEndian)]) as sock:
        sock.sendall(_pdv(7, 0x03, _store_request(CT, "1.2.3.10")))
        kind, body = _read_pdu(sock)
        assert kind == 0x07 and body[2] == 2  # A-ABORT from the service provider
    assert _eventually(lambda: "association.aborted" in gateway.events("RAW"))


def test_a_release_inside_a_data_set_leaves_nothing_behind(gateway: Gateway) -> None:
    with _associate(gateway.port, [(CT, ImplicitVRLittleEndian)]) as sock:
        sock.sendall(_pdv(1, 0x03, _store_request(CT, "1.2.3.11")) + _pdv(1, 0x00, _data_set()))
        sock.sendall(struct.pack(">BxL", 0x05, 4) + bytes(4))
        assert _read_pdu(sock)[0] == 0x06
    assert _eventually(lambda: gateway.staging_leftovers() == [])
    assert instance_by_sop(gateway.db, "1.2.3.11") is None


def test_more_associations_than_allowed_are_rejected(tmp_path: Path) -> None:
    running = Gateway(tmp_path, max_associations=1)
    try:
        with _associate(running.port, [(CT, ImplicitVRLittleEndian)]):
            ae = AE(ae_title="SECOND")
            ae.add_requested_context(CT)
            second = ae.associate("127.0.0.1", running.port, ae_title="GATEWAY")
            assert second.is_rejected
        assert _eventually(lambda: "association.rejected" in running.events("SECOND"))
        (event,) = [r for r in recent_events(running.db, actor="SECOND")]
        assert "local limit exceeded" in str(event["detail"])
    finally:
        running.listener.shutdown()
        running.db.close()
