"""Spans of the message services and what `trace STUDY_UID` says about retrievals and commitment.

In-process: the listener `start_listener` builds (C-FIND, C-MOVE, C-GET and the storage
commitment service) with an in-memory span exporter, pynetdicom as the workstation, the move
destination and the modality, and the reporter thread's `run_once` driven by the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from gateway.commitment.reporter import CommitmentReporter
from gateway.db.events import audit, events_for
from gateway.dimse.ae import start_listener
from gateway.dimse.commitment import StorageCommitmentService
from gateway.report import format_trace, study_trace
from gateway.telemetry import Telemetry
from tests.harness import free_port, wait_until
from tests.harness.commitment import Modality
from tests.unit.test_dimse_commitment import commitment_config
from tests.unit.test_dimse_query_retrieve import (
    PR_FIND,
    SR_FIND,
    SR_GET,
    SR_MOVE,
    Received,
    Site,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Traced:
    site: Site
    spans: InMemorySpanExporter
    telemetry: Telemetry
    modality: Modality

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def parent_of(self, span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        [parent] = [
            s for s in self.spans.get_finished_spans() if s.context.span_id == span.parent.span_id
        ]
        return parent

    def reporter(self) -> CommitmentReporter:
        commitment = self.site.settings.dimse.storage_commitment
        assert commitment is not None
        return CommitmentReporter(
            settings=commitment,
            db=self.site.db,
            owner="test/commitment",
            stop=threading.Event(),
            telemetry=self.telemetry,
        )

    def sops(self, study: str) -> list[str]:
        with self.site.db.transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT sop_instance_uid FROM instances WHERE study_instance_uid = ? "
                "ORDER BY instance_number",
                (study,),
            ).fetchall()
        return [str(row["sop_instance_uid"]) for row in rows]


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    modality = Modality("MODALITY", free_port())
    site = Site(tmp_path, storage_commitment=commitment_config(modality.port, timeout=30))
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracer_provider=provider)
    commitment = site.settings.dimse.storage_commitment
    assert commitment is not None
    site.listener.shutdown()  # the same listener again, now traced and with commitment
    site.listener = start_listener(
        site.settings,
        site.ingestor,
        partial(audit, site.db),
        telemetry,
        services=[StorageCommitmentService(commitment, site.db)],
    )
    site.port = site.listener.server_address[1]
    try:
        yield Traced(site, spans, telemetry, modality)
    finally:
        modality.stop_listening()
        site.close()


def request(traced: Traced, model: str, keys: dict[str, object], destination: str = "") -> list:
    assoc = traced.site.associate(model)
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    try:
        if destination:
            return list(assoc.send_c_move(query, destination, model))
        return list(assoc.send_c_find(query, model))
    finally:
        assoc.release()


def associations(traced: Traced, count: int) -> list[ReadableSpan]:
    wait_until(
        lambda: len(traced.finished("DIMSE association")) >= count,
        timeout=10,
        message=f"{count} association span(s) ended",
    )
    return traced.finished("DIMSE association")


def test_find_and_move_spans_are_children_of_their_association(traced: Traced) -> None:
    site = traced.site
    found = request(traced, SR_FIND, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert [int(status.Status) for status, _ in found] == [0xFF00, 0xFF00, 0x0000]
    refused = request(traced, PR_FIND, {"QueryRetrieveLevel": "FRAME"})
    assert int(refused[-1][0].Status) != 0x0000
    moved = request(
        traced,
        SR_MOVE,
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": site.ct_study},
        destination="VIEWER",
    )
    assert int(moved[-1][0].Status) == 0x0000
    associations(traced, 3)

    finds = traced.finished("DIMSE C-FIND")
    assert len(finds) == 2
    ok, bad = sorted(finds, key=lambda s: s.start_time or 0)
    assert traced.parent_of(ok).name == "DIMSE association"
    assert ok.kind.name == "SERVER"
    assert ok.attributes["dicom.qr.model"] == "study_root"
    assert ok.attributes["dicom.qr.level"] == "STUDY"
    assert ok.attributes["dicom.qr.matches"] == 2
    assert ok.attributes["dicom.status"] == "0x0000"
    assert ok.attributes["dicom.calling_ae"] == "WS1"
    assert ok.status.status_code.name == "UNSET"
    assert bad.attributes["dicom.qr.model"] == "patient_root"
    assert bad.attributes["dicom.status"] != "0x0000"
    assert bad.status.status_code.name == "ERROR"

    [move] = traced.finished("DIMSE C-MOVE")
    association = traced.parent_of(move)
    assert association.name == "DIMSE association"
    assert association.attributes["dicom.calling_ae"] == "WS1"
    assert move.attributes["dicom.qr.level"] == "STUDY"
    assert move.attributes["dicom.study_instance_uid"] == site.ct_study
    assert move.attributes["dicom.move_destination"] == "VIEWER"
    assert move.attributes["dicom.qr.matches"] == 3
    assert move.attributes["dicom.suboperations.completed"] == 3
    assert move.attributes["dicom.suboperations.failed"] == 0
    assert move.attributes["dicom.suboperations.warning"] == 0
    assert move.attributes["dicom.status"] == "0x0000"
    events = [e for e in move.events if e.name == "C-STORE sub-operation"]
    assert sorted(str(e.attributes["dicom.sop_instance_uid"]) for e in events) == sorted(
        traced.sops(site.ct_study)
    )
    assert {e.attributes["dicom.status"] for e in events} == {"0x0000"}
    # The spans never leaked into the listener thread's context: each association a new trace.
    assert len({s.context.trace_id for s in associations(traced, 3)}) == 3


def test_a_retrieve_of_two_studies_is_audited_once_per_study(traced: Traced) -> None:
    site = traced.site
    request(
        traced,
        SR_MOVE,
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": [site.ct_study, site.mr_study]},
        destination="VIEWER",
    )
    for study, count in ((site.ct_study, 3), (site.mr_study, 2)):
        [event] = events_for(site.db, study_uid=study, kinds=("dimse.c_move",))
        detail = json.loads(str(event["detail"]))
        assert event["actor"] == "WS1"
        assert detail["completed"] == 5, "the whole retrieve's counts"
        assert detail["study"] == {"matches": count, "completed": count, "failed": 0, "warning": 0}
        [retrieval] = study_trace(site.db, study)["retrievals"]
        assert (retrieval["matches"], retrieval["completed"]) == (count, count)
    [move] = traced.finished("DIMSE C-MOVE")
    assert move.attributes["dicom.study_instance_uid"] == (site.ct_study, site.mr_study)


def test_n_action_and_each_report_attempt_are_one_trace(traced: Traced) -> None:
    site = traced.site
    ct = traced.sops(site.ct_study)
    missing = generate_uid()
    status, transaction_uid = traced.modality.request(
        site.port, [(CT, sop) for sop in ct] + [(CT, missing)]
    )
    assert int(status.Status) == 0x0000
    associations(traced, 1)
    [action] = traced.finished("DIMSE N-ACTION")
    assert traced.parent_of(action).name == "DIMSE association"
    assert action.attributes["dicom.transaction_uid"] == transaction_uid
    assert action.attributes["dicom.commitment.items"] == 4
    assert action.attributes["dicom.status"] == "0x0000"

    reporter = traced.reporter()
    later = time.time() + 60  # past the deadline: the missing instance is reported failed
    assert reporter.run_once(now=later)  # nobody listens yet: a failed attempt
    traced.modality.listen()
    assert reporter.run_once(now=later + 120)
    report = traced.modality.report(timeout=10)
    assert report.transaction_uid == transaction_uid and report.event_type == 2

    attempts = sorted(traced.finished("DIMSE N-EVENT-REPORT"), key=lambda s: s.start_time or 0)
    assert len(attempts) == 2
    for number, attempt in enumerate(attempts, start=1):
        assert attempt.kind.name == "CLIENT"
        assert attempt.context.trace_id == action.context.trace_id
        assert attempt.parent is not None and attempt.parent.span_id == action.context.span_id
        assert attempt.attributes["dicom.transaction_uid"] == transaction_uid
        assert attempt.attributes["gateway.attempt"] == number
        assert attempt.attributes["dicom.commitment.event_type"] == 2
        assert attempt.attributes["dicom.commitment.committed"] == 3
        assert attempt.attributes["dicom.commitment.failed"] == 1
    assert attempts[0].status.status_code.name == "ERROR"
    assert attempts[0].attributes["gateway.outcome"] == "failed"
    assert attempts[1].status.status_code.name == "UNSET"
    assert attempts[1].attributes["gateway.outcome"] == "reported"


def test_trace_names_who_retrieved_the_study_and_each_instance_commitment(
    traced: Traced,
) -> None:
    site = traced.site
    request(
        traced,
        SR_MOVE,
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": site.ct_study},
        destination="VIEWER",
    )
    request(  # a C-FIND is no retrieval
        traced, SR_FIND, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": site.ct_study}
    )
    first, second, third = traced.sops(site.ct_study)
    _, committed_uid = traced.modality.request(site.port, [(CT, first), (CT, second)])
    traced.modality.listen()
    assert traced.reporter().run_once()
    traced.modality.report(timeout=10)
    _, pending_uid = traced.modality.request(site.port, [(CT, second), (CT, generate_uid())])

    result = study_trace(site.db, site.ct_study)
    [retrieval] = result["retrievals"]
    assert retrieval["operation"] == "C-MOVE" and retrieval["by"] == "WS1"
    assert retrieval["peer"] == "127.0.0.1"
    assert retrieval["destination"] == {
        "ae_title": "VIEWER",
        "host": "127.0.0.1",
        "port": site.destination_port,
    }
    assert (retrieval["matches"], retrieval["completed"], retrieval["failed"]) == (3, 3, 0)
    assert retrieval["status"] == "0x0000" and retrieval["outcome"] == "success"
    by_sop = {i["sop_instance_uid"]: i["commitments"] for i in result["instances"]}
    [one] = by_sop[first]
    assert one["transaction_uid"] == committed_uid and one["requested_by"] == "MODALITY"
    assert one["state"] == "committed" and one["report"] == "reported"
    assert one["reported_at"] is not None and one["trace_id"] is not None
    old, new = by_sop[second]
    assert (old["transaction_uid"], new["transaction_uid"]) == (committed_uid, pending_uid)
    assert (new["state"], new["report"], new["reported_at"]) == ("pending", "pending", None)
    assert by_sop[third] == []
    assert result["commitment_summary"] == {"committed": 1, "pending": 1}
    json.dumps(result, default=str)  # what --json and the admin API print

    text = format_trace(result)
    assert "storage commitment: 1 committed, 1 pending" in text
    assert (
        f"by WS1 (127.0.0.1): C-MOVE to VIEWER (127.0.0.1:{site.destination_port}), "
        "3 completed, 0 failed, 0 warning, status 0x0000"
    ) in text
    assert f"commitment {committed_uid} from MODALITY" in text
    assert f"commitment {pending_uid} from MODALITY" in text and "report pending" in text


def test_a_failed_instance_shows_its_failure_reason(traced: Traced) -> None:
    site = traced.site
    [sop, *_] = traced.sops(site.mr_study)
    # An MR instance asked for as CT: a class/instance conflict, decided at once.
    _, transaction_uid = traced.modality.request(site.port, [(CT, sop)])
    traced.modality.listen()
    assert traced.reporter().run_once()
    traced.modality.report(timeout=10)
    result = study_trace(site.db, site.mr_study)
    by_sop = {i["sop_instance_uid"]: i for i in result["instances"]}
    [entry] = by_sop[sop]["commitments"]
    assert entry["state"] == "failed" and entry["failure_reason"] == "0x0119"
    assert entry["reason"] and "stored with SOP class" in entry["reason"]
    assert entry["report"] == "reported"
    text = format_trace(result)
    assert f"commitment {transaction_uid} from MODALITY" in text
    assert "failed 0x0119 (class/instance conflict; stored with SOP class" in text


def test_a_get_is_a_span_and_a_retrieval_back_to_the_caller(traced: Traced) -> None:
    site = traced.site
    received = Received()
    roles = []
    for uid in (CTImageStorage, MRImageStorage):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = uid
        role.scu_role, role.scp_role = False, True
        roles.append(role)
    assoc = site.associate(
        SR_GET, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, received.on_store)]
    )
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = site.mr_study
    responses = list(assoc.send_c_get(query, SR_GET))
    assoc.release()
    assert int(responses[-1][0].Status) == 0x0000
    associations(traced, 1)
    [get] = traced.finished("DIMSE C-GET")
    assert traced.parent_of(get).name == "DIMSE association"
    assert get.attributes["dicom.study_instance_uid"] == site.mr_study
    assert "dicom.move_destination" not in get.attributes
    assert get.attributes["dicom.suboperations.completed"] == 2
    assert len([e for e in get.events if e.name == "C-STORE sub-operation"]) == 2
    [retrieval] = study_trace(site.db, site.mr_study)["retrievals"]
    assert retrieval["operation"] == "C-GET" and retrieval["destination"] is None
    assert retrieval["completed"] == 2
    assert "C-GET back to the caller, 2 completed" in format_trace(
        study_trace(site.db, site.mr_study)
    )


class Counting:
    """A tracer that notes the name of every span the SDK is asked to make."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.names: list[str] = []

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.names.append(name)
        return self._inner.start_span(name, *args, **kwargs)

    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.names.append(name)
        return self._inner.start_as_current_span(name, *args, **kwargs)


def test_without_a_span_exporter_the_services_make_no_spans(tmp_path: Path) -> None:
    site = Site(tmp_path)
    telemetry = Telemetry.from_environment(
        service_version="test", instance_id="unit", environ={"OTEL_TRACES_EXPORTER": "none"}
    )
    started = Counting(telemetry.tracer)
    telemetry.tracer = started  # type: ignore[assignment]
    site.listener.shutdown()
    site.listener = start_listener(site.settings, site.ingestor, partial(audit, site.db), telemetry)
    site.port = site.listener.server_address[1]
    try:
        traced = Traced(site, InMemorySpanExporter(), telemetry, Modality("M", free_port()))
        found = request(traced, SR_FIND, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
        assert int(found[-1][0].Status) == 0x0000
        moved = request(
            traced,
            SR_MOVE,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": site.ct_study},
            destination="VIEWER",
        )
        assert int(moved[-1][0].Status) == 0x0000
    finally:
        site.close()
        telemetry.shutdown()
    # Only the association roots (unsampled, made for their ids); the C-FIND and C-MOVE spans
    # were not even asked of the SDK: they carry the unsampled parent's context.
    assert started.names == ["DIMSE association", "DIMSE association"]
