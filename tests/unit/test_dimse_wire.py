"""The listener's own wire code against pynetdicom's and pydicom's encoders and decoders.

gateway/dimse/commands.py, file_meta.py, pdu.py and negotiation.py replace pynetdicom's
acceptor for speed; these tests hold them to what the libraries produce and accept.
"""

from __future__ import annotations

import io
import socket
import struct

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from gateway.dicom.file_meta import file_meta
from gateway.dimse import pdu
from gateway.dimse.commands import (
    C_STORE_RQ as C_STORE_FIELD,
)
from gateway.dimse.commands import (
    CommandError,
    decode_command,
    encode_response,
)
from gateway.dimse.negotiation import decode_request, negotiate

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.826.0.1.3680043.8.498.1"


def _store_request_bytes() -> bytes:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = SOP
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.DataSet = io.BytesIO(b"\x00" * 4)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    (first, *_) = message.encode_msg(1, 16384)
    return bytes(first.presentation_data_value_list[0][1][1:])


def test_a_pynetdicom_store_request_is_read() -> None:
    command = decode_command(_store_request_bytes())
    assert command.command_field == C_STORE_FIELD
    assert command.message_id == 7
    assert command.has_data_set
    assert command.affected_sop_class_uid == CT
    assert command.affected_sop_instance_uid == SOP


def test_responses_decode_with_pydicom() -> None:
    request = decode_command(_store_request_bytes())
    response = decode(io.BytesIO(encode_response(request, 0xC000, "bad \\ data " * 10)), True, True)
    assert response.CommandField == 0x8001
    assert response.MessageIDBeingRespondedTo == 7
    assert response.CommandDataSetType == 0x0101
    assert response.Status == 0xC000
    assert response.AffectedSOPClassUID == CT
    assert response.AffectedSOPInstanceUID == SOP
    assert len(response.ErrorComment) <= 64 and "\\" not in response.ErrorComment
    encoded = encode_response(request, 0x0000, "ignored on success")
    assert decode(io.BytesIO(encoded), True, True).CommandGroupLength == len(encoded) - 12
    assert b"ignored" not in encoded


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00",  # shorter than an element header
        struct.pack("<HHL", 0x0008, 0x0016, 2) + b"ab",  # not group 0000
        struct.pack("<HHL", 0x0000, 0x0100, 200) + b"ab",  # runs past the end
        struct.pack("<HHL", 0x0000, 0x0110, 2) + b"ab",  # no Command Field
        struct.pack("<HHL", 0x0000, 0x0100, 3) + b"abc",  # US of 3 bytes
    ],
)
def test_malformed_command_sets_are_refused(data: bytes) -> None:
    with pytest.raises(CommandError):
        decode_command(data)


def test_file_meta_reads_back_with_pydicom() -> None:
    body = Dataset()
    body.SOPClassUID = CT
    body.SOPInstanceUID = SOP + "1"  # odd length: padded
    body.PatientName = "Meta^Test"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, body)
    data = file_meta(CT, SOP + "1", ExplicitVRLittleEndian) + buffer.getvalue()
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert dataset.file_meta.MediaStorageSOPInstanceUID == SOP + "1"
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.file_meta.FileMetaInformationVersion == b"\x00\x01"
    meta = io.BytesIO()
    write_file_meta_info(meta, dataset.file_meta)
    assert data[132 : 132 + len(meta.getvalue())] == meta.getvalue()
    assert dataset.PatientName == "Meta^Test"


def test_pdus_are_read_whole_and_bounded() -> None:
    left, right = socket.socketpair()
    with left, right:
        reader = pdu.PduReader(left, limit=1000)
        items = struct.pack(">LBB", 5, 1, 0x00) + b"abc" + struct.pack(">LBB", 4, 1, 0x03) + b"de"
        right.sendall(struct.pack(">BxL", pdu.P_DATA_TF, len(items)) + items)
        kind, body = reader.read()
        assert kind == pdu.P_DATA_TF
        values = [
            (v.context_id, v.is_command, v.is_last, bytes(v.data)) for v in pdu.iter_pdvs(body)
        ]
        assert values == [(1, False, False, b"abc"), (1, True, True, b"de")]
        right.sendall(struct.pack(">BxL", pdu.P_DATA_TF, 5000))
        with pytest.raises(pdu.ProtocolViolation, match="5000-byte PDU"):
            reader.read()
        right.sendall(struct.pack(">BxL", pdu.A_RELEASE_RQ, 4) + b"\x00")
        right.shutdown(socket.SHUT_WR)
        with pytest.raises(pdu.PeerClosed, match="before the entire PDU"):
            reader.read()


def test_pdvs_that_overrun_their_pdu_are_refused() -> None:
    body = memoryview(struct.pack(">LBB", 50, 1, 0x03) + b"short")
    with pytest.raises(pdu.ProtocolViolation):
        list(pdu.iter_pdvs(body))


def test_negotiation_accepts_storage_and_echo_and_answers_pynetdicom_style() -> None:
    request = A_ASSOCIATE()
    request.calling_ae_title = "MODALITY"
    request.called_ae_title = "GATEWAY"
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    contexts = [
        build_context(CT, [ImplicitVRLittleEndian]),
        build_context("1.2.840.10008.1.1"),
        build_context("1.2.840.10008.5.1.4.1.2.1.1"),  # patient root FIND: not served
    ]
    for number, context in enumerate(contexts):
        context.context_id = 1 + 2 * number
    request.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 32768
    request.user_information = [length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(request)
    decoded = decode_request(rq.encode()[6:])
    assert (decoded.calling_ae, decoded.called_ae, decoded.max_pdu) == (
        "MODALITY",
        "GATEWAY",
        32768,
    )
    encoded, accepted = negotiate(decoded, 262144)
    assert [(cx.context_id, cx.abstract_syntax) for cx in accepted] == [
        (1, CT),
        (3, "1.2.840.10008.1.1"),
    ]
    assert accepted[0].transfer_syntax == ImplicitVRLittleEndian
    ac = A_ASSOCIATE_AC()
    ac.decode(encoded)
    answer = ac.to_primitive()
    assert answer.maximum_length_received == 262144
    results = {
        cx.context_id: cx.result for cx in answer.presentation_context_definition_results_list
    }
    assert results[1] == 0 and results[3] == 0 and results[5] != 0


def test_an_undecodable_association_request_is_a_protocol_violation() -> None:
    with pytest.raises(pdu.ProtocolViolation, match="cannot be decoded"):
        decode_request(b"\x00\x01" + b"\xff" * 80)
