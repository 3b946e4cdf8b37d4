"""Query/Retrieve SCP end to end: DCMTK findscu, movescu and getscu against the gateway process.

Two studies of two patients (CT, 3 instances; MR, 2 instances) are stored with storescu; the
gateway then answers C-FIND at every level in both information models, moves a study to a
DCMTK storescp configured in `dimse.move_destinations`, and sends a series back over the
caller's own association (C-GET). Every peer is real and on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests.harness import (
    GatewayProcess,
    StoreSCP,
    dataset_bytes,
    free_port,
    make_tiny_instances,
    require_binary,
    same_content,
    storescu,
    write_config,
)
from tests.harness.qrscu import findscu, getscu, movescu

pytestmark = [pytest.mark.dcmtk]

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Site:
    gateway: GatewayProcess
    viewer: StoreSCP
    ct: list[Path]
    mr: list[Path]
    work: Path

    def uid(self, path: Path, keyword: str) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for program in ("storescu", "findscu", "movescu", "getscu", "storescp"):
        require_binary(program)
    work = tmp_path_factory.mktemp("qr")
    ct = make_tiny_instances(work / "ct", 3, patient_name="DOE^JOHN")
    mr = make_tiny_instances(
        work / "mr",
        2,
        seed=1,
        patient_name="ROE^JANE",
        overrides={"Modality": "MR", "SOPClassUID": MR_IMAGE, "StudyDate": "20240301"},
    )
    viewer = StoreSCP(work / "viewer" / "received", aet="VIEWER").start()
    config = write_config(
        work / "gateway.yaml",
        dimse_port=free_port(),
        spool=work / "spool",
        database=work / "gateway.db",
        destinations={},
        routes=[],
        extra={
            "dimse": {"move_destinations": {"VIEWER": {"host": "127.0.0.1", "port": viewer.port}}}
        },
    )
    try:
        with GatewayProcess(config, work) as gateway:
            sent = storescu([*ct, *mr], gateway.dimse_port, called_aet=gateway.ae_title)
            assert sent.returncode == 0, sent.stderr
            yield Site(gateway, viewer, ct, mr, work)
    finally:
        viewer.stop()


def find(site: Site, keys: dict[str, str], model: str = "study", name: str = "find") -> object:
    result = findscu(
        site.gateway.dimse_port,
        keys,
        called_aet=site.gateway.ae_title,
        outdir=site.work / name,
        model=model,
    )
    assert result.process.returncode == 0, result.log[-2000:]
    return result


def test_study_level_wildcard_and_date_range(site: Site) -> None:
    result = findscu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "STUDY",
            "PatientName": "DOE*",
            "StudyInstanceUID": "",
            "NumberOfStudyRelatedInstances": "",
            "NumberOfStudyRelatedSeries": "",
            "ModalitiesInStudy": "",
            "StudyDate": "",
        },
        called_aet=site.gateway.ae_title,
        outdir=site.work / "study",
    )
    assert result.statuses == [0xFF00, 0x0000], result.log[-2000:]
    [answer] = result.answers
    assert answer.StudyInstanceUID == site.uid(site.ct[0], "StudyInstanceUID")
    assert answer.NumberOfStudyRelatedInstances == 3
    assert answer.NumberOfStudyRelatedSeries == 1
    assert answer.ModalitiesInStudy == "CT"
    assert answer.StudyDate == "20240115"
    assert str(answer.PatientName) == "DOE^JOHN"
    assert answer.QueryRetrieveLevel == "STUDY"

    ranged = findscu(
        site.gateway.dimse_port,
        {"QueryRetrieveLevel": "STUDY", "StudyDate": "20240201-20240331", "PatientID": ""},
        called_aet=site.gateway.ae_title,
        outdir=site.work / "range",
    )
    assert ranged.statuses == [0xFF00, 0x0000]
    assert [a.PatientID for a in ranged.answers] == [site.uid(site.mr[0], "PatientID")]

    everything = findscu(
        site.gateway.dimse_port,
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
        called_aet=site.gateway.ae_title,
        outdir=site.work / "all",
    )
    assert everything.final == 0x0000 and len(everything.answers) == 2


def test_series_and_image_levels(site: Site) -> None:
    study = site.uid(site.mr[0], "StudyInstanceUID")
    series = findscu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "SERIES",
            "StudyInstanceUID": study,
            "SeriesInstanceUID": "",
            "Modality": "",
            "NumberOfSeriesRelatedInstances": "",
        },
        called_aet=site.gateway.ae_title,
        outdir=site.work / "series",
    )
    assert series.statuses == [0xFF00, 0x0000]
    [answer] = series.answers
    assert answer.Modality == "MR"
    assert answer.NumberOfSeriesRelatedInstances == 2
    assert answer.SeriesInstanceUID == site.uid(site.mr[0], "SeriesInstanceUID")

    images = findscu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": site.uid(site.ct[0], "StudyInstanceUID"),
            "SOPInstanceUID": "",
            "SOPClassUID": "",
            "InstanceNumber": "",
        },
        called_aet=site.gateway.ae_title,
        outdir=site.work / "images",
    )
    assert images.statuses == [0xFF00] * 3 + [0x0000]
    assert {a.SOPInstanceUID for a in images.answers} == {
        site.uid(p, "SOPInstanceUID") for p in site.ct
    }
    assert sorted(a.InstanceNumber for a in images.answers) == [1, 2, 3]


def test_patient_root(site: Site) -> None:
    patients = findscu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "PATIENT",
            "PatientID": "",
            "PatientName": "",
            "NumberOfPatientRelatedStudies": "",
            "NumberOfPatientRelatedInstances": "",
        },
        called_aet=site.gateway.ae_title,
        outdir=site.work / "patients",
        model="patient",
    )
    assert patients.final == 0x0000
    found = {
        str(a.PatientName): (a.NumberOfPatientRelatedStudies, a.NumberOfPatientRelatedInstances)
        for a in patients.answers
    }
    assert found == {"DOE^JOHN": (1, 3), "ROE^JANE": (1, 2)}

    studies = findscu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "STUDY",
            "PatientID": site.uid(site.mr[0], "PatientID"),
            "StudyInstanceUID": "",
        },
        called_aet=site.gateway.ae_title,
        outdir=site.work / "patient-studies",
        model="patient",
    )
    assert studies.statuses == [0xFF00, 0x0000]
    assert studies.answers[0].StudyInstanceUID == site.uid(site.mr[0], "StudyInstanceUID")


def test_bad_queries_get_a900_with_a_reason(site: Site) -> None:
    below = findscu(
        site.gateway.dimse_port,
        {"QueryRetrieveLevel": "PATIENT", "StudyDate": "20240115"},
        called_aet=site.gateway.ae_title,
        outdir=site.work / "bad",
        model="patient",
    )
    assert below.statuses == [0xA900]
    assert any("StudyDate is a STUDY key" in c for c in below.comments), below.log[-2000:]
    no_level = findscu(
        site.gateway.dimse_port,
        {"PatientName": "DOE*"},
        called_aet=site.gateway.ae_title,
        outdir=site.work / "bad",
    )
    assert no_level.statuses == [0xA900]
    assert any("QueryRetrieveLevel missing" in c for c in no_level.comments)


def test_move_a_study_to_a_configured_destination(site: Site) -> None:
    study = site.uid(site.ct[0], "StudyInstanceUID")
    result = movescu(
        site.gateway.dimse_port,
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study},
        called_aet=site.gateway.ae_title,
        destination="VIEWER",
    )
    assert result.statuses == [0xFF00, 0xFF00, 0x0000], result.log[-3000:]
    for path in site.ct:
        received = site.viewer.file_for(site.uid(path, "SOPInstanceUID"))
        assert received is not None
        assert same_content(path, received)
        assert dataset_bytes(received) == dataset_bytes(path)
    assert not {site.uid(p, "SOPInstanceUID") for p in site.mr} & (
        site.viewer.received_sop_instance_uids()
    )


def test_move_to_an_unknown_destination_is_a801(site: Site) -> None:
    result = movescu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "STUDY",
            "StudyInstanceUID": site.uid(site.ct[0], "StudyInstanceUID"),
        },
        called_aet=site.gateway.ae_title,
        destination="STRANGER",
    )
    assert result.statuses == [0xA801]
    assert any("dimse.move_destinations" in c for c in result.comments)


def test_get_a_series_into_a_folder(site: Site) -> None:
    outdir = site.work / "got"
    result = getscu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "SERIES",
            "SeriesInstanceUID": site.uid(site.mr[0], "SeriesInstanceUID"),
        },
        called_aet=site.gateway.ae_title,
        outdir=outdir,
    )
    assert result.statuses == [0xFF00, 0x0000], result.log[-3000:]
    got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in outdir.iterdir()}
    assert set(got) == {site.uid(p, "SOPInstanceUID") for p in site.mr}
    for path in site.mr:
        received = got[site.uid(path, "SOPInstanceUID")]
        assert same_content(path, received)
        assert dataset_bytes(received) == dataset_bytes(path)


def test_a_cancelled_move_ends_with_fe00(site: Site) -> None:
    # movescu sends C-CANCEL on reading the first pending response; the gateway notices it
    # once the sub-operation then in flight (2 of 3) or the last one is answered.
    result = movescu(
        site.gateway.dimse_port,
        {
            "QueryRetrieveLevel": "STUDY",
            "StudyInstanceUID": site.uid(site.ct[0], "StudyInstanceUID"),
        },
        called_aet=site.gateway.ae_title,
        destination="VIEWER",
        extra_args=["--cancel", "1"],
    )
    assert result.statuses[0] == 0xFF00, result.log[-3000:]
    assert result.final == 0xFE00, result.log[-3000:]
