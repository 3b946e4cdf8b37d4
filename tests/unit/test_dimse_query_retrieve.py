"""C-FIND, C-MOVE and C-GET in-process, real ingest (SQLite + folder spool), pynetdicom peers.

The listener is the one `start_listener` builds, so the services are registered exactly as in
production; the move destination is a pynetdicom Storage SCP on a free loopback port.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from gateway.auditlog import recent_events
from gateway.db import open_database
from gateway.db.events import audit
from gateway.dicom.structure import data_set_offset
from gateway.dimse.ae import start_listener
from gateway.dimse.channel import Request, encode_data_set
from gateway.dimse.identifiers import STUDY_ROOT_FIND
from gateway.dimse.negotiation import AcceptedContext
from gateway.dimse.query import FindService
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool
from tests.harness import free_port
from tests.unit.test_ingest import settings

PR_FIND = str(PatientRootQueryRetrieveInformationModelFind)
SR_FIND = str(StudyRootQueryRetrieveInformationModelFind)
SR_MOVE = str(StudyRootQueryRetrieveInformationModelMove)
SR_GET = str(StudyRootQueryRetrieveInformationModelGet)


def write_instance(folder: Path, **values: Any) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = values.pop("charset", "ISO_IR 100")
    ds.SOPClassUID = values.pop("sop_class", CTImageStorage)
    ds.SOPInstanceUID = generate_uid()
    syntax = values.pop("syntax", ExplicitVRLittleEndian)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(256)) * 64
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


class Received:
    """A pynetdicom Storage SCP: the move destination, or the C-GET requestor's handler."""

    def __init__(self) -> None:
        self.data_sets: dict[str, bytes] = {}
        self.originators: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def on_store(self, event: evt.Event) -> int:
        request = event.request
        with self.lock:
            self.data_sets[str(request.AffectedSOPInstanceUID)] = request.DataSet.getvalue()
            if request.MoveOriginatorApplicationEntityTitle:
                self.originators.append(
                    (
                        str(request.MoveOriginatorApplicationEntityTitle).strip(),
                        int(request.MoveOriginatorMessageID),
                    )
                )
        return 0x0000


class Site:
    """A gateway holding two studies (CT with 3 instances, MR with 2) and a move destination."""

    def __init__(self, tmp_path: Path, **dimse: Any) -> None:
        self.destination = Received()
        self.destination_port = free_port()
        self.scp_ae = AE(ae_title="VIEWER")
        self.scp_ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        self.scp_ae.add_supported_context(MRImageStorage, ExplicitVRLittleEndian)
        self.scp: Any = self.scp_ae.start_server(
            ("127.0.0.1", self.destination_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.destination.on_store)],
        )
        moves = {"VIEWER": {"host": "127.0.0.1", "port": self.destination_port}}
        self.settings = settings(
            tmp_path, dimse={"move_destinations": moves, **dimse}, routing_default="hold"
        )
        self.db = open_database(self.settings.storage.database)
        self.spool = FilesystemSpool(tmp_path / "spool")
        self.ingestor = Ingestor(self.settings, self.spool, self.db)
        incoming = tmp_path / "spool" / ".incoming"
        self.files: dict[str, Path] = {}
        self.ct_study, self.mr_study = "1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.2"
        for study, modality, count, name, date, patient in (
            (self.ct_study, "CT", 3, "DOE^JOHN", "20240115", "P1"),
            (self.mr_study, "MR", 2, "Müller^Jürgen", "20240301", "P2"),
        ):
            for index in range(count):
                path = write_instance(
                    incoming,
                    sop_class=CTImageStorage if modality == "CT" else MRImageStorage,
                    StudyInstanceUID=study,
                    SeriesInstanceUID=f"{study}.1",
                    PatientName=name,
                    PatientID=patient,
                    StudyDate=date,
                    Modality=modality,
                    SeriesNumber=1,
                    InstanceNumber=index + 1,
                )
                sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                self.files[sop] = tmp_path / "originals" / f"{sop}.dcm"
                self.files[sop].parent.mkdir(exist_ok=True)
                self.files[sop].write_bytes(path.read_bytes())
                self.ingestor.accept_file(path, Source(door="dimse", calling_ae="CT1"))
        self.listener = start_listener(self.settings, self.ingestor, partial(audit, self.db))
        self.port = self.listener.server_address[1]

    def data_set(self, sop: str) -> bytes:
        with self.files[sop].open("rb") as stream:
            stream.seek(data_set_offset(stream))
            return stream.read()

    def associate(self, *contexts: str, **kwargs: Any) -> Any:
        ae = AE(ae_title="WS1")
        for uid in contexts:
            ae.add_requested_context(uid)
        for uid in (CTImageStorage, MRImageStorage):
            if "ext_neg" in kwargs:
                ae.add_requested_context(uid, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="GATEWAY", **kwargs)
        assert assoc.is_established
        return assoc

    def close(self) -> None:
        self.listener.shutdown()
        if self.scp is not None:
            self.scp.shutdown()
        self.db.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    gateway = Site(tmp_path)
    yield gateway
    gateway.close()


def find(site: Site, model: str, **keys: Any) -> list[tuple[int, Dataset | None, Dataset]]:
    assoc = site.associate(model)
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    try:
        return [
            (int(status.Status), answer, status)
            for status, answer in assoc.send_c_find(query, model)
        ]
    finally:
        assoc.release()


def test_find_studies_with_wildcard_date_range_and_counts(site: Site) -> None:
    answers = find(
        site,
        SR_FIND,
        QueryRetrieveLevel="STUDY",
        PatientName="DOE*",
        StudyDate="20240101-20240131",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
    )
    assert [status for status, _, _ in answers] == [0xFF00, 0x0000]
    answer = answers[0][1]
    assert answer is not None
    assert answer.StudyInstanceUID == site.ct_study
    assert answer.NumberOfStudyRelatedInstances == 3
    assert answer.ModalitiesInStudy == "CT"
    assert answer.QueryRetrieveLevel == "STUDY"
    assert [e["kind"] for e in recent_events(site.db, actor="WS1")].count("dimse.c_find") == 1


def test_find_patients_and_images(site: Site) -> None:
    patients = find(
        site,
        PR_FIND,
        QueryRetrieveLevel="PATIENT",
        PatientName="",
        NumberOfPatientRelatedInstances="",
    )
    got = {
        str(a.PatientID): (str(a.PatientName), a.NumberOfPatientRelatedInstances)
        for s, a, _ in patients
        if s == 0xFF00 and a is not None
    }
    assert got == {"P1": ("DOE^JOHN", 3), "P2": ("Müller^Jürgen", 2)}
    images = find(
        site, SR_FIND, QueryRetrieveLevel="IMAGE", StudyInstanceUID=site.mr_study, SOPInstanceUID=""
    )
    assert [s for s, _, _ in images] == [0xFF00, 0xFF00, 0x0000]


def test_find_refuses_a_bad_identifier_with_a_comment(site: Site) -> None:
    answers = find(site, PR_FIND, QueryRetrieveLevel="PATIENT", StudyDate="20240115")
    [(status, _, response)] = answers
    assert status == 0xA900
    assert "StudyDate is a STUDY key" in str(response.ErrorComment)
    [(status, _, response)] = find(site, SR_FIND, QueryRetrieveLevel="STUDY", StudyDate="2024-1-1")
    assert status == 0xA900
    assert "StudyDate" in str(response.ErrorComment)


def test_find_stops_at_max_find_results(tmp_path: Path) -> None:
    gateway = Site(tmp_path, max_find_results=3)
    try:
        answers = find(gateway, SR_FIND, QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
    finally:
        gateway.close()
    assert [status for status, _, _ in answers] == [0xFF00] * 3 + [0xA700]
    assert "narrow" in str(answers[-1][2].ErrorComment)


class FakeChannel:
    """Records responses; the peer 'cancels' once `after` responses were sent."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.statuses: list[int] = []

    def respond(self, request: Request, status: int, data_set: Any = None, **_: object) -> None:
        self.statuses.append(status)

    def cancelled(self, message_id: int) -> bool:
        return len(self.statuses) >= self.after


def test_a_cancelled_find_ends_with_fe00(site: Site) -> None:
    service = FindService(site.settings, site.db, site.spool, partial(audit, site.db))
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = ""
    command = Dataset()
    command.CommandField = 0x0020
    command.MessageID = 7
    command.AffectedSOPClassUID = STUDY_ROOT_FIND
    context = AcceptedContext(1, STUDY_ROOT_FIND, ExplicitVRLittleEndian)
    request = Request(context, command, encode_data_set(query, ExplicitVRLittleEndian))
    channel = FakeChannel(after=2)
    association = type("A", (), {"calling_ae": "WS1", "peer": "127.0.0.1"})()
    service.serve(association, channel, request)  # type: ignore[arg-type]
    assert channel.statuses == [0xFF00, 0xFF00, 0xFE00]


def test_move_sends_the_study_as_stored_with_the_move_originator(site: Site) -> None:
    assoc = site.associate(SR_MOVE)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = site.ct_study
    responses = list(assoc.send_c_move(query, "VIEWER", SR_MOVE))
    assoc.release()
    final = responses[-1][0]
    assert int(final.Status) == 0x0000
    assert int(final.NumberOfCompletedSuboperations) == 3
    assert [int(s.Status) for s, _ in responses[:-1]] == [0xFF00, 0xFF00]
    ct = {sop for sop, path in site.files.items() if "CT" in dcmread(path).Modality}
    assert set(site.destination.data_sets) == ct
    for sop in ct:
        assert site.destination.data_sets[sop] == site.data_set(sop)
    assert {ae for ae, _ in site.destination.originators} == {"WS1"}
    kinds = [e["kind"] for e in recent_events(site.db, actor="WS1")]
    assert "dimse.c_move" in kinds


def test_move_to_an_unknown_destination_is_a801(site: Site) -> None:
    assoc = site.associate(SR_MOVE)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = site.ct_study
    [(status, _)] = list(assoc.send_c_move(query, "NOBODY", SR_MOVE))
    assoc.release()
    assert int(status.Status) == 0xA801
    assert "dimse.move_destinations" in str(status.ErrorComment)
    assert site.destination.data_sets == {}


def test_get_streams_a_series_on_the_same_association(site: Site) -> None:
    received = Received()
    roles = []
    for uid in (CTImageStorage, MRImageStorage):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = uid
        role.scu_role = False
        role.scp_role = True
        roles.append(role)
    assoc = site.associate(
        SR_GET, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, received.on_store)]
    )
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.SeriesInstanceUID = f"{site.mr_study}.1"
    responses = list(assoc.send_c_get(query, SR_GET))
    assoc.release()
    final = responses[-1][0]
    assert int(final.Status) == 0x0000
    assert int(final.NumberOfCompletedSuboperations) == 2
    assert len(received.data_sets) == 2
    for sop, data in received.data_sets.items():
        assert data == site.data_set(sop)


def test_get_without_a_storage_context_fails_the_sub_operations(site: Site) -> None:
    assoc = site.associate(SR_GET)  # no storage contexts, no role selection
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = site.mr_study
    responses = list(assoc.send_c_get(query, SR_GET))
    assoc.release()
    final, identifier = responses[-1]
    assert int(final.Status) == 0xA702
    assert int(final.NumberOfFailedSuboperations) == 2
    assert "no presentation context" in str(final.ErrorComment)
    assert identifier is not None and len(identifier.FailedSOPInstanceUIDList) == 2


def move(site: Site, destination: str = "VIEWER", **keys: Any) -> list[tuple[Dataset, Any]]:
    assoc = site.associate(SR_MOVE)
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    try:
        return list(assoc.send_c_move(query, destination, SR_MOVE))
    finally:
        assoc.release()


def test_move_audit_says_who_what_and_where(site: Site) -> None:
    move(site, QueryRetrieveLevel="STUDY", StudyInstanceUID=site.mr_study)
    [event] = [e for e in recent_events(site.db, actor="WS1") if e["kind"] == "dimse.c_move"]
    detail = json.loads(str(event["detail"]))
    assert event["outcome"] == "success"
    assert event["study_instance_uid"] == site.mr_study
    assert detail["level"] == "STUDY" and detail["matches"] == 2 and detail["completed"] == 2
    assert detail["destination"] == {
        "ae_title": "VIEWER",
        "host": "127.0.0.1",
        "port": site.destination_port,
    }


def test_move_to_an_unreachable_destination_is_a702_with_the_failed_list(
    tmp_path: Path,
) -> None:
    gateway = Site(tmp_path)
    gateway.scp.shutdown()  # configured, but nobody listens
    gateway.scp = None
    try:
        responses = move(gateway, QueryRetrieveLevel="STUDY", StudyInstanceUID=gateway.mr_study)
    finally:
        gateway.close()
    final, identifier = responses[-1]
    assert int(final.Status) == 0xA702
    assert int(final.NumberOfFailedSuboperations) == 2
    assert "connect failed" in str(final.ErrorComment)
    assert identifier is not None and len(identifier.FailedSOPInstanceUIDList) == 2


def test_a_refused_sop_class_fails_only_its_sub_operations(tmp_path: Path) -> None:
    gateway = Site(tmp_path)
    # The viewer takes CT only: the MR instances' context is refused.
    gateway.scp.shutdown()
    ae = AE(ae_title="VIEWER")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    gateway.scp = ae.start_server(
        ("127.0.0.1", gateway.destination_port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, gateway.destination.on_store)],
    )
    ct = [sop for sop, path in gateway.files.items() if dcmread(path).Modality == "CT"]
    mr = [sop for sop in gateway.files if sop not in ct]
    try:
        responses = move(gateway, QueryRetrieveLevel="IMAGE", SOPInstanceUID=[ct[0], *mr])
    finally:
        gateway.close()
    final, identifier = responses[-1]
    assert int(final.Status) == 0xB000
    assert int(final.NumberOfCompletedSuboperations) == 1
    assert int(final.NumberOfFailedSuboperations) == 2
    assert "context rejected" in str(final.ErrorComment)
    assert identifier is not None and set(identifier.FailedSOPInstanceUIDList) == set(mr)
    assert set(gateway.destination.data_sets) == {ct[0]}


def test_a_cancelled_move_stops_between_sub_operations(site: Site) -> None:
    from gateway.dimse.identifiers import STUDY_ROOT_MOVE
    from gateway.dimse.retrieve import RetrieveService

    service = RetrieveService(site.settings, site.db, site.spool, partial(audit, site.db))
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = site.ct_study
    command = Dataset()
    command.CommandField = 0x0021
    command.MessageID = 9
    command.AffectedSOPClassUID = STUDY_ROOT_MOVE
    command.MoveDestination = "VIEWER"
    context = AcceptedContext(1, STUDY_ROOT_MOVE, ExplicitVRLittleEndian)
    request = Request(context, command, encode_data_set(query, ExplicitVRLittleEndian))
    channel = FakeChannel(after=1)  # the caller cancels after the first pending response
    association = type("A", (), {"calling_ae": "WS1", "peer": "127.0.0.1"})()
    service.serve(association, channel, request)  # type: ignore[arg-type]
    assert channel.statuses == [0xFF00, 0xFE00]
    assert len(site.destination.data_sets) == 2  # the third was never sent


def test_find_matches_a_name_in_the_query_character_set(site: Site) -> None:
    answers = find(
        site,
        SR_FIND,
        SpecificCharacterSet="ISO_IR 100",
        QueryRetrieveLevel="STUDY",
        PatientName="Müller*",
    )
    [(status, answer, _), (final, _, _)] = answers
    assert (status, final) == (0xFF00, 0x0000)
    assert answer is not None
    assert answer.SpecificCharacterSet == "ISO_IR 100"  # as stored: it holds every value
    assert str(answer.PatientName) == "Müller^Jürgen"
