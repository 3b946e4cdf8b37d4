"""Hostile and broken DIMSE input: precise statuses, nothing stored, nothing else touched."""

from __future__ import annotations

import random
import sqlite3
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.e2e.scu import header_ids, send_files
from tests.harness import (
    GatewayProcess,
    dataset_offset,
    echoscu,
    free_port,
    make_ct_series,
    write_config,
)

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture
def gateway(tmp_path: Path) -> GatewayProcess:
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={},
        routes=[],
        extra={
            "dimse": {
                "allowed_callers": [
                    {"ae_title": "MODALITY", "host": "127.0.0.1"},
                    {"ae_title": "ELSEWHERE", "host": "10.9.9.9"},
                ]
            }
        },
    )
    process = GatewayProcess(config, tmp_path)
    process.start()
    yield process
    process.stop()


def _rows(tmp_path: Path) -> set[str]:
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        return {row[0] for row in db.execute("SELECT sop_instance_uid FROM instances")}


def _spooled(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "spool").rglob("*.dcm") if ".incoming" not in p.parts]


def test_bad_objects_get_precise_statuses_and_leave_no_trace(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    good, truncated, garbage, traversal = make_ct_series(tmp_path / "src", 4, rows=64, cols=64)
    assert send_files([good], gateway.dimse_port) == {header_ids(good)[1]: 0}

    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 1000])

    meta_end = dataset_offset(garbage)
    garbage.write_bytes(garbage.read_bytes()[:meta_end] + random.Random(7).randbytes(5000))

    ds = pydicom.dcmread(traversal)
    with warnings.catch_warnings():  # pydicom rightly warns about the invalid UID
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = "1.2.3/../../../../tmp/evil"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(traversal, enforce_file_format=True)

    statuses = send_files([truncated, garbage, traversal], gateway.dimse_port)
    by_file = {
        name: statuses[header_ids(path)[1]]
        for name, path in [("truncated", truncated), ("garbage", garbage), ("traversal", traversal)]
    }
    assert by_file == {"truncated": 0xC000, "garbage": 0xC000, "traversal": 0xC000}

    assert _rows(tmp_path) == {header_ids(good)[1]}, "only the good instance is recorded"
    assert len(_spooled(tmp_path)) == 1
    assert not list(Path("/tmp").glob("evil*"))
    assert gateway.alive and gateway.echo() == 0
    log = gateway.log_text()
    assert "truncated" in log and "not a valid DICOM UID" in log


def test_unknown_calling_ae_is_rejected(gateway: GatewayProcess, tmp_path: Path) -> None:
    (instance,) = make_ct_series(tmp_path / "src", 1, rows=64, cols=64)
    statuses = send_files([instance], gateway.dimse_port, calling_aet="INTRUDER")
    assert statuses == {header_ids(instance)[1]: None}
    # Right AE title, wrong host: ELSEWHERE is bound to 10.9.9.9.
    statuses = send_files([instance], gateway.dimse_port, calling_aet="ELSEWHERE")
    assert statuses == {header_ids(instance)[1]: None}
    refused = echoscu(gateway.dimse_port, called_aet=gateway.ae_title, calling_aet="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert _rows(tmp_path) == set() and _spooled(tmp_path) == []
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        kinds = [row[0] for row in db.execute("SELECT kind FROM events WHERE actor = 'INTRUDER'")]
    assert "association.rejected" in kinds
    assert gateway.alive
