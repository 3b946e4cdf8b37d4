"""Per-destination transforms end to end: storescu -> gateway -> storescp / Orthanc STOW-RS.

Every peer is real and on 127.0.0.1. What the destinations wrote is read back with pydicom and
compared with what was sent; the gateway's own spool copy is compared too (it must be the
original), and `dicom-gateway trace` must say what was done and under which UID it was sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import DATA_ROOT

from tests.harness import (
    GatewayProcess,
    OrthancServer,
    StoreSCP,
    free_port,
    make_tiny_instances,
    require_binary,
    same_content,
    storescu,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.dcmtk]

FAST_RETRY = {"max_attempts": 50, "initial_backoff": 0.2, "max_backoff": 1.0}
SECRET = {"E2E_DEID_SECRET": "e2e-secret-" + "7" * 24}
FILES = Path(DATA_ROOT) / "test_files"


def config(tmp_path: Path, destinations: dict[str, Any]) -> Path:
    return write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations=destinations,
        routes=[{"name": "everything", "forward": list(destinations)}],
        extra={"delivery": {"poll_interval": 0.1, "lease_seconds": 30}},
    )


def pacs(scp: StoreSCP, transform: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "dimse",
        "ae_title": scp.aet,
        "host": "127.0.0.1",
        "port": scp.port,
        "retry": FAST_RETRY,
        "transform": transform,
    }


def trace(gateway: GatewayProcess, study_uid: str, *, as_json: bool = True) -> Any:
    options = ["--json"] if as_json else []
    result = gateway.run_cli("trace", "--config", str(gateway.config_path), *options, study_uid)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if as_json else result.stdout


def spool_copy(tmp_path: Path, sop_uid: str) -> Path:
    (found,) = (tmp_path / "spool").rglob(f"{sop_uid}.*dcm")
    return found


def attempts(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """SOP Instance UID (as stored) -> its attempts, for the one destination."""
    return {
        instance["sop_instance_uid"]: instance["deliveries"][0]["attempts_log"]
        for instance in report["instances"]
    }


def test_deidentified_and_coerced_over_cstore(tmp_path: Path, storescp: StoreSCP) -> None:
    require_binary("storescu")
    study = "1.2.826.0.1.3680043.8.498.4242"
    identity = {"PatientID": "MRN-0042", "InstitutionName": "GEN HOSP", "StationName": "CT-ROOM-1"}
    sent = make_tiny_instances(
        tmp_path / "in", 3, study_uid=study, patient_name="DOE^JANE", overrides=identity
    )
    burned = make_tiny_instances(
        tmp_path / "burned", 1, seed=7, study_uid=study, overrides={"BurnedInAnnotation": "YES"}
    )
    transform = {
        "deidentify": {"secret_env": "E2E_DEID_SECRET"},
        "coerce": {
            "set": {"ClinicalTrialSponsorName": "Trial Sponsor"},
            "remove": ["StationName"],
            "map": {"Manufacturer": {"Harness Medical": "Harness Inc."}},
        },
    }
    path = config(tmp_path, {"pacs": pacs(storescp, transform)})
    originals = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in sent}
    with GatewayProcess(path, tmp_path, env=SECRET) as gateway:
        result = storescu([*sent, *burned], gateway.dimse_port, called_aet=gateway.ae_title)
        assert result.returncode == 0, result.stderr

        def settled() -> bool:
            return trace(gateway, study)["summary"].get("pacs") == {"delivered": 3, "dead": 1}

        wait_until(settled, timeout=60, message="3 delivered and 1 dead-lettered")
        report = trace(gateway, study)
        text = trace(gateway, study, as_json=False)

    received = [pydicom.dcmread(p) for p in storescp.received_files()]
    assert len(received) == 3
    log = attempts(report)
    remapped_studies = {str(ds.StudyInstanceUID) for ds in received}
    assert len(remapped_studies) == 1 and study not in remapped_studies
    for ds in received:
        sop = str(ds.SOPInstanceUID)
        assert sop.startswith("2.25.") and sop not in originals
        # The trace maps the stored instance to the one sent: find the original through it.
        (original_sop,) = [
            uid for uid, tries in log.items() if any(sop in (t["detail"] or "") for t in tries)
        ]
        original = originals[original_sop]
        assert str(ds.PatientName) != "DOE^JANE" and ds.PatientID != "MRN-0042"
        assert ds.PatientID.startswith("ANON-") and ds.PatientIdentityRemoved == "YES"
        assert "StationName" not in ds and ds.ClinicalTrialSponsorName == "Trial Sponsor"
        assert ds.get("InstitutionName") != "GEN HOSP"
        assert ds.StudyDate != original.StudyDate
        assert ds.PixelData == original.PixelData
        # The gateway's own copy is the original, byte for byte in its data set.
        stored = spool_copy(tmp_path, original_sop)
        assert same_content(sent[[*originals].index(original_sop)], stored)
        detail = log[original_sop][-1]["detail"]
        assert detail.startswith(
            "de-identified (basic profile), coerced (1 set, 1 removed, 1 mapped)"
        )
        assert ds.Manufacturer == "Harness Inc."
    burned_sop = str(pydicom.dcmread(burned[0]).SOPInstanceUID)
    (dead,) = log[burned_sop]
    assert dead["outcome"] == "dead" and dead["status"] == "transform failed"
    assert "BurnedInAnnotation is YES" in dead["detail"]
    assert "de-identified (basic profile)" in text and "sent as SOP instance 2.25." in text


@pytest.mark.orthanc
def test_transcoded_for_cstore_and_stowrs(
    tmp_path: Path, storescp: StoreSCP, orthanc: OrthancServer
) -> None:
    require_binary("storescu")
    compressed = FILES / "MR_small_jp2klossless.dcm"  # JPEG 2000 lossless
    plain = pydicom.dcmread(FILES / "MR_small.dcm")  # the same image, uncompressed
    original = pydicom.dcmread(compressed)
    sop, study = str(original.SOPInstanceUID), str(original.StudyInstanceUID)
    explicit = "1.2.840.10008.1.2.1"
    destinations = {
        "pacs": pacs(storescp, {"transfer_syntax": explicit}),
        "cloud": {
            "type": "dicomweb",
            "url": orthanc.dicomweb_url,
            "retry": FAST_RETRY,
            "transform": {
                "transfer_syntax": "ExplicitVRLittleEndian",
                "deidentify": {"secret_env": "E2E_DEID_SECRET"},
            },
        },
    }
    with GatewayProcess(config(tmp_path, destinations), tmp_path, env=SECRET) as gateway:
        result = storescu([compressed], gateway.dimse_port, called_aet=gateway.ae_title)
        assert result.returncode == 0, result.stderr

        def delivered() -> bool:
            summary = trace(gateway, study)["summary"]
            return summary.get("pacs") == {"delivered": 1} and summary.get("cloud") == {
                "delivered": 1
            }

        wait_until(delivered, timeout=60, message="delivered to both destinations")
        report = trace(gateway, study)
    (instance,) = report["instances"]
    details = {d["destination"]: d["attempts_log"][-1]["detail"] for d in instance["deliveries"]}
    assert details["pacs"] == f"transcoded 1.2.840.10008.1.2.4.90 -> {explicit}"
    assert details["cloud"].startswith(
        f"de-identified (basic profile), transcoded 1.2.840.10008.1.2.4.90 -> {explicit}; "
        "sent as SOP instance 2.25."
    )
    at_pacs = storescp.file_for(sop)
    assert at_pacs is not None
    received = pydicom.dcmread(at_pacs)
    assert received.file_meta.TransferSyntaxUID == explicit
    assert received.PixelData == plain.PixelData and received.PatientName == original.PatientName
    (at_cloud,) = orthanc.sop_instance_uids()
    assert at_cloud.startswith("2.25.") and at_cloud in details["cloud"]
    copy = tmp_path / "orthanc.dcm"
    copy.write_bytes(orthanc.instance_file(at_cloud))
    stored = pydicom.dcmread(copy)
    assert stored.file_meta.TransferSyntaxUID == explicit
    assert stored.PixelData == plain.PixelData and stored.PatientIdentityRemoved == "YES"
    assert same_content(compressed, spool_copy(tmp_path, sop))  # still JPEG 2000 in the spool
