"""Who retrieved a study and was it committed, end to end: DCMTK findscu and movescu and a
pynetdicom storage commitment SCU against the gateway process, which exports its spans to a
real OTLP/HTTP receiver; then `dicom-gateway trace STUDY_UID` (text and `--json`) answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
import pytest

from tests.e2e.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.e2e.scu import header_ids
from tests.e2e.test_observability import otel_env
from tests.harness import (
    GatewayProcess,
    StoreSCP,
    free_port,
    make_tiny_instances,
    require_binary,
    storescu,
    wait_until,
    write_config,
)
from tests.harness.commitment import Modality
from tests.harness.qrscu import findscu, movescu

pytestmark = [pytest.mark.dcmtk]


@dataclass
class Run:
    spans: list[ReceivedSpan]
    study: str
    instances: list[tuple[str, str]]  # (SOP class, SOP instance)
    transaction_uid: str
    viewer_port: int
    trace_json: dict[str, object]
    trace_text: str

    def one(self, name: str) -> ReceivedSpan:
        found = [s for s in self.spans if s.name == name]
        assert len(found) == 1, f"{name}: {len(found)} span(s)"
        return found[0]

    def parent(self, span: ReceivedSpan) -> ReceivedSpan:
        [parent] = [s for s in self.spans if s.span_id == span.parent_span_id]
        return parent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    for program in ("storescu", "findscu", "movescu", "storescp"):
        require_binary(program)
    work = tmp_path_factory.mktemp("qrtrace")
    files = make_tiny_instances(work / "ct", 3, patient_name="DOE^JOHN")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    instances = [header_ids(path)[:2] for path in files]
    viewer = StoreSCP(work / "viewer" / "received", aet="VIEWER").start()
    modality = Modality("MODALITY", free_port()).listen()
    config = write_config(
        work / "gateway.yaml",
        dimse_port=free_port(),
        spool=work / "spool",
        database=work / "gateway.db",
        destinations={},
        routes=[],
        extra={
            "dimse": {
                "move_destinations": {"VIEWER": {"host": "127.0.0.1", "port": viewer.port}},
                "storage_commitment": {
                    "policy": "stored",
                    "timeout": 5,
                    "poll_interval": 0.1,
                    "acse_timeout": 2,
                    "dimse_timeout": 2,
                    "peers": {"MODALITY": {"host": "127.0.0.1", "port": modality.port}},
                },
            }
        },
    )
    try:
        with OtlpReceiver() as otlp:
            gateway = GatewayProcess(config, work, env=otel_env("gw", otlp.endpoint))
            with gateway:
                sent = storescu(files, gateway.dimse_port, called_aet=gateway.ae_title)
                assert sent.returncode == 0, sent.stderr
                found = findscu(
                    gateway.dimse_port,
                    {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                    called_aet=gateway.ae_title,
                    outdir=work / "find",
                )
                assert found.statuses == [0xFF00, 0x0000], found.log[-2000:]
                moved = movescu(
                    gateway.dimse_port,
                    {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study},
                    called_aet=gateway.ae_title,
                    destination="VIEWER",
                )
                assert moved.final == 0x0000, moved.log[-2000:]
                status, transaction_uid = modality.request(
                    gateway.dimse_port, instances, called_ae=gateway.ae_title
                )
                assert int(status.Status) == 0x0000, status
                assert transaction_uid is not None
                report = modality.report(timeout=30)
                assert (report.transaction_uid, report.event_type) == (transaction_uid, 1)
                spans = otlp.wait_for(
                    lambda got: (
                        {
                            "DIMSE C-FIND",
                            "DIMSE C-MOVE",
                            "DIMSE N-ACTION",
                            "DIMSE N-EVENT-REPORT",
                        }
                        <= {s.name for s in got}
                        and sum(s.name == "DIMSE association" for s in got) >= 4
                    )
                )

                def reported() -> bool:
                    listed = gateway.run_cli("commitments", "--config", str(config), "--json")
                    return json.loads(listed.stdout)[0]["state"] == "reported"

                wait_until(reported, timeout=10, message="the report recorded")
                as_json = gateway.run_cli("trace", "--config", str(config), "--json", study)
                as_text = gateway.run_cli("trace", "--config", str(config), study)
        assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr
        yield Run(
            spans=spans,
            study=study,
            instances=instances,
            transaction_uid=transaction_uid,
            viewer_port=viewer.port,
            trace_json=json.loads(as_json.stdout),
            trace_text=as_text.stdout,
        )
    finally:
        modality.stop_listening()
        viewer.stop()


def test_find_and_move_spans_sit_under_their_association_spans(run: Run) -> None:
    find = run.one("DIMSE C-FIND")
    association = run.parent(find)
    assert association.name == "DIMSE association" and association.parent_span_id is None
    assert association.attributes["dicom.calling_ae"] == "FINDSCU"
    assert find.kind == "SERVER" and find.trace_id == association.trace_id
    assert find.attributes["dicom.qr.model"] == "study_root"
    assert find.attributes["dicom.qr.level"] == "STUDY"
    assert find.attributes["dicom.qr.matches"] == 1
    assert find.attributes["dicom.status"] == "0x0000"

    move = run.one("DIMSE C-MOVE")
    association = run.parent(move)
    assert association.name == "DIMSE association"
    assert association.attributes["dicom.calling_ae"] == "MOVESCU"
    assert move.attributes["dicom.qr.model"] == "study_root"
    assert move.attributes["dicom.qr.level"] == "STUDY"
    assert move.attributes["dicom.study_instance_uid"] == run.study
    assert move.attributes["dicom.move_destination"] == "VIEWER"
    assert move.attributes["dicom.suboperations.completed"] == 3
    assert move.attributes["dicom.suboperations.failed"] == 0
    assert move.attributes["dicom.suboperations.warning"] == 0
    assert move.attributes["dicom.status"] == "0x0000"
    events = [attrs for name, attrs in move.events if name == "C-STORE sub-operation"]
    assert sorted(e["dicom.sop_instance_uid"] for e in events) == sorted(
        sop for _, sop in run.instances
    )


def test_n_action_and_its_report_are_one_trace(run: Run) -> None:
    action = run.one("DIMSE N-ACTION")
    association = run.parent(action)
    assert association.name == "DIMSE association"
    assert association.attributes["dicom.calling_ae"] == "MODALITY"
    assert action.attributes["dicom.transaction_uid"] == run.transaction_uid
    assert action.attributes["dicom.commitment.items"] == 3
    assert action.attributes["dicom.status"] == "0x0000"
    report = run.one("DIMSE N-EVENT-REPORT")
    assert report.kind == "CLIENT"
    assert report.trace_id == action.trace_id and report.parent_span_id == action.span_id
    assert report.attributes["dicom.transaction_uid"] == run.transaction_uid
    assert report.attributes["dicom.called_ae"] == "MODALITY"
    assert report.attributes["dicom.commitment.event_type"] == 1
    assert report.attributes["dicom.commitment.committed"] == 3
    assert report.attributes["gateway.outcome"] == "reported"
    assert report.status_code != 2


def test_trace_lists_the_retrieval_and_each_instance_commitment(run: Run) -> None:
    trace = run.trace_json
    [retrieval] = trace["retrievals"]  # type: ignore[misc]
    assert retrieval["operation"] == "C-MOVE" and retrieval["by"] == "MOVESCU"
    assert retrieval["destination"] == {
        "ae_title": "VIEWER",
        "host": "127.0.0.1",
        "port": run.viewer_port,
    }
    assert (retrieval["completed"], retrieval["failed"], retrieval["warning"]) == (3, 0, 0)
    assert retrieval["status"] == "0x0000"
    instances = trace["instances"]
    assert isinstance(instances, list) and len(instances) == 3
    for instance in instances:
        [commitment] = instance["commitments"]
        assert commitment["transaction_uid"] == run.transaction_uid
        assert commitment["state"] == "committed" and commitment["report"] == "reported"
        assert commitment["reported_at"] is not None
        assert commitment["trace_id"] == run.one("DIMSE N-ACTION").trace_id
    assert trace["commitment_summary"] == {"committed": 3}

    text = run.trace_text
    assert "storage commitment: 3 committed" in text
    assert (
        f"by MOVESCU (127.0.0.1): C-MOVE to VIEWER (127.0.0.1:{run.viewer_port}), "
        "3 completed, 0 failed, 0 warning, status 0x0000"
    ) in text
    assert text.count(f"commitment {run.transaction_uid} from MODALITY") == 3
    assert "committed, reported" in text
