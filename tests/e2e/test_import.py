"""`dicom-gateway import`: a folder of files into the spool, routed and delivered like any arrival.

The import runs as an operator would run it (the CLI, in its own process) next to a running
gateway that delivers to a real DCMTK storescp. What is not an instance is skipped and named,
a file ingest refuses is listed with its status, the user's files are left untouched, and a
second run of the same import sends nothing twice.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pydicom
import pytest

from tests.e2e.test_bridge import FAST_RETRY, gateway_config, trace
from tests.harness import GatewayProcess, StoreSCP, make_ct_series, same_content, wait_until

pytestmark = [pytest.mark.dcmtk]


def _digests(folder: Path) -> dict[Path, str]:
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_import_folder_is_routed_delivered_and_reported(tmp_path: Path, storescp: StoreSCP) -> None:
    export = tmp_path / "export"
    series = make_ct_series(export / "CT" / "SERIES1", 6, rows=64, cols=64)
    (export / "README.TXT").write_text("patient CD\n")
    bad = pydicom.dcmread(series[0])
    with warnings.catch_warnings():  # pydicom rightly warns about the invalid UID
        warnings.simplefilter("ignore")
        bad.StudyInstanceUID = "1.2.3/../../../../tmp/evil"
        bad.SOPInstanceUID = "1.2.3.4.5.6"
        bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        bad.save_as(export / "bad.dcm", enforce_file_format=True)
    before = _digests(export)

    config = gateway_config(
        tmp_path,
        {
            "pacs": {
                "type": "dimse",
                "ae_title": storescp.aet,
                "host": "127.0.0.1",
                "port": storescp.port,
                "retry": FAST_RETRY,
            }
        },
        [{"name": "imports-to-pacs", "match": {"source": "import"}, "forward": ["pacs"]}],
    )
    gateway = GatewayProcess(config, tmp_path / "gw")
    gateway.start()
    try:
        result = gateway.run_cli("import", "--config", str(config), "--batch", "4", str(export))
        assert result.returncode == 1, result.stdout + result.stderr  # one file refused
        assert "accepted 6: stored 6" in result.stdout
        assert "refused 1:" in result.stdout and "bad.dcm: 0xC000" in result.stdout
        assert "skipped 1:" in result.stdout and "README.TXT: not a DICOM Part 10" in result.stdout
        assert "import: 8/8 files" in result.stderr  # the progress line's last state

        sent = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in series}
        wait_until(
            lambda: set(sent) <= storescp.received_sop_instance_uids(),
            timeout=60,
            message="every imported instance at storescp",
        )
        for sop, original in sent.items():
            received = storescp.file_for(sop)
            assert received is not None and same_content(original, received)
        study = str(pydicom.dcmread(series[0]).StudyInstanceUID)
        report = trace(gateway, study)
        assert report["summary"] == {"pacs": {"delivered": 6}}
        assert _digests(export) == before, "the import must not move or change the originals"

        again = gateway.run_cli("import", "--config", str(config), str(export / "CT"))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "accepted 6: stored 0, already held 6" in again.stdout
        assert trace(gateway, study)["summary"] == {"pacs": {"delivered": 6}}

        checked = gateway.run_cli("spool-check", "--config", str(config), "--verify")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "6 instances recorded, 6 objects in the spool" in checked.stdout
        assert "verified 6 object(s)" in checked.stdout
    finally:
        gateway.stop()


def test_import_of_a_missing_path_names_it(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, {}, [])
    gateway = GatewayProcess(config, tmp_path)
    result = gateway.run_cli("import", "--config", str(config), str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "nowhere: no such file or folder" in result.stderr
