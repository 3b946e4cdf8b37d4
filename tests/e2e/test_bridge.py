"""The bridge end to end: modality -> gateway (DIMSE) -> Orthanc (STOW-RS) + PACS (C-STORE).

Every peer is real and on 127.0.0.1: DCMTK storescu/storescp, Orthanc with its DICOMweb plugin,
and the gateway itself as a subprocess started from its YAML config.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.scu import header_ids, send_files
from tests.harness import (
    GatewayProcess,
    OrthancServer,
    StoreSCP,
    dataset_bytes,
    dataset_offset,
    free_port,
    make_ct_series,
    make_multiframe,
    pydicom_storage_files,
    require_binary,
    same_content,
    storescu,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.orthanc]

FAST_RETRY = {"max_attempts": 50, "initial_backoff": 0.2, "max_backoff": 1.0}


def gateway_config(
    tmp_path: Path,
    destinations: dict[str, Any],
    routes: list[Any],
    lease_seconds: float = 30,
    **extra: Any,
) -> Path:
    return write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations=destinations,
        routes=routes,
        extra={"delivery": {"poll_interval": 0.1, "lease_seconds": lease_seconds}, **extra},
    )


def trace(gateway: GatewayProcess, study_uid: str) -> dict[str, Any]:
    result = gateway.run_cli("trace", "--config", str(gateway.config_path), "--json", study_uid)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def file_sha(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def promiscuous_pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp accepting every SOP class (-pm), bit-preserving: the byte-fidelity PACS.

    Orthanc re-encodes some objects it receives over DIMSE (e.g. waveforms), so it cannot
    witness byte fidelity on the C-STORE side.
    """
    require_binary("storescp")
    scp = StoreSCP(tmp_path / "pacs" / "received", aet="PACS", extra_args=["-pm"])
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def test_series_and_large_multiframe_reach_stowrs_and_cstore(
    tmp_path: Path, orthanc: OrthancServer, storescp: StoreSCP
) -> None:
    require_binary("storescu")
    config = gateway_config(
        tmp_path,
        {
            "cloud": {"type": "dicomweb", "url": orthanc.dicomweb_url, "retry": FAST_RETRY},
            "pacs": {
                "type": "dimse",
                "ae_title": storescp.aet,
                "host": "127.0.0.1",
                "port": storescp.port,
                "retry": FAST_RETRY,
            },
        },
        [{"name": "everything", "forward": ["cloud", "pacs"]}],
    )
    series = make_ct_series(tmp_path / "series", 12)
    big = make_multiframe(tmp_path / "big" / "multiframe.dcm", 210 * 1024 * 1024)
    with GatewayProcess(config, tmp_path) as gateway:
        sent = storescu([*series, big], gateway.dimse_port, called_aet=gateway.ae_title)
        assert sent.returncode == 0, sent.stderr
        expected = {header_ids(path)[1] for path in [*series, big]}
        wait_until(
            lambda: expected <= orthanc.sop_instance_uids(),
            timeout=180,
            message="every instance at Orthanc",
        )
        wait_until(
            lambda: expected <= storescp.received_sop_instance_uids(),
            timeout=180,
            message="every instance at storescp",
        )
        for path in series:
            sop = header_ids(path)[1]
            received = storescp.file_for(sop)
            assert received is not None and same_content(path, received)
            stored = tmp_path / "orthanc-copy.dcm"
            stored.write_bytes(orthanc.instance_file(sop))
            assert same_content(path, stored)
        # The 210 MB object: compare digests of the data set bytes (storescu keeps them as-is
        # for this explicit little endian file without group lengths or padding).
        big_sop = header_ids(big)[1]
        original = file_sha(big, dataset_offset(big))
        received = storescp.file_for(big_sop)
        assert received is not None
        assert file_sha(received, dataset_offset(received)) == original
        report = trace(gateway, _study(series[0]))
        assert report["summary"] == {"cloud": {"delivered": 12}, "pacs": {"delivered": 12}}
        rss = _peak_rss_kib(gateway.pid)
    print(f"gateway peak RSS after a 210 MB object and a series: {rss / 1024:.0f} MiB")
    assert rss < 400 * 1024, "the 210 MB object must stream, not sit in memory"


def test_pydicom_files_arrive_byte_identical(
    tmp_path: Path, orthanc: OrthancServer, promiscuous_pacs: StoreSCP
) -> None:
    # One file per data set SOP Instance UID (pydicom ships two files whose stale file meta
    # hides that they hold the same instance).
    files = list({_sop(path): path for path in reversed(pydicom_storage_files())}.values())
    assert len(files) >= 100
    config = gateway_config(
        tmp_path,
        {
            "cloud": {"type": "dicomweb", "url": orthanc.dicomweb_url, "retry": FAST_RETRY},
            "pacs": {
                "type": "dimse",
                "ae_title": promiscuous_pacs.aet,
                "host": "127.0.0.1",
                "port": promiscuous_pacs.port,
                "retry": FAST_RETRY,
            },
        },
        [{"name": "everything", "forward": ["cloud", "pacs"]}],
    )
    with GatewayProcess(config, tmp_path) as gateway:
        statuses = send_files(files, gateway.dimse_port)
        refused = {sop: status for sop, status in statuses.items() if status != 0}
        assert not refused, f"the gateway refused valid objects: {refused}"
        # The data set's own UID is what destinations index (one file has stale file meta).
        expected = {_sop(path) for path in files}
        wait_until(
            lambda: expected <= orthanc.sop_instance_uids(),
            timeout=180,
            message="every pydicom file at Orthanc (STOW-RS)",
        )
        wait_until(
            lambda: expected <= promiscuous_pacs.received_sop_instance_uids(),
            timeout=180,
            message="every pydicom file at the PACS (C-STORE)",
        )
        for path in files:
            sop = _sop(path)
            original = dataset_bytes(path)
            copy = tmp_path / "copy.dcm"
            copy.write_bytes(orthanc.instance_file(sop))
            assert dataset_bytes(copy) == original, f"{path.name} changed via STOW-RS"
            received = promiscuous_pacs.file_for(sop)
            assert received is not None, f"{path.name} missing at the PACS"
            # DIMSE needs even lengths: an odd (deflated) data set gets its one PS3.5 NUL pad.
            padded = original + b"\x00" if len(original) % 2 else original
            assert dataset_bytes(received) == padded, f"{path.name} changed via C-STORE"


def test_destination_down_then_back_delivers_each_instance_once(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    config = gateway_config(
        tmp_path,
        {"cloud": {"type": "dicomweb", "url": orthanc.dicomweb_url, "retry": FAST_RETRY}},
        [{"name": "to-cloud", "forward": ["cloud"]}],
        # Once the breaker opens (5 failed batches) one instance is probed per interval.
        health={"probe_interval": 0.5},
    )
    series = make_ct_series(tmp_path / "series", 8, rows=128, cols=128)
    study = _study(series[0])
    orthanc.stop()
    with GatewayProcess(config, tmp_path) as gateway:
        statuses = send_files(series, gateway.dimse_port)
        assert set(statuses.values()) == {0}, "acknowledged although the destination is down"

        def retried() -> bool:
            report = trace(gateway, study)
            return all(d["attempts"] >= 2 for i in report["instances"] for d in i["deliveries"])

        wait_until(retried, timeout=60, message="failed attempts recorded")
        queue = gateway.run_cli("queue", "--config", str(gateway.config_path))
        assert "cloud" in queue.stdout and "pending" in queue.stdout, queue.stdout
        report = trace(gateway, study)
        attempt = report["instances"][0]["deliveries"][0]["attempts_log"][0]
        assert attempt["outcome"] == "pending" and attempt["detail"], attempt
        orthanc.start()
        wait_until(
            lambda: trace(gateway, study)["summary"] == {"cloud": {"delivered": 8}},
            timeout=90,
            message="delivered after the destination came back",
        )
        report = trace(gateway, study)
        for instance in report["instances"]:
            (delivery,) = instance["deliveries"]
            outcomes = [a["outcome"] for a in delivery["attempts_log"]]
            assert outcomes.count("delivered") == 1 and outcomes[-1] == "delivered"
        assert orthanc.instance_count() == 8
        text = gateway.run_cli("trace", "--config", str(gateway.config_path), study).stdout
        assert "delivered" in text and "rule to-cloud" in text


def test_sigkill_while_receiving_and_forwarding_loses_nothing_acknowledged(
    tmp_path: Path, storescp: StoreSCP
) -> None:
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
        [{"name": "to-pacs", "forward": ["pacs"]}],
        lease_seconds=5,
    )
    series = make_ct_series(tmp_path / "series", 60)
    acknowledged: set[str] = set()
    delays = random.Random(11)
    interrupted = 0
    gateway = GatewayProcess(config, tmp_path)
    gateway.start()
    try:
        remaining = list(series)
        for _round in range(20):
            if not remaining:
                break
            killer = threading.Timer(delays.uniform(0.02, 0.3), gateway.kill)
            killer.start()
            statuses = send_files(remaining, gateway.dimse_port, timeout=3)
            killer.join()
            acknowledged |= {sop for sop, status in statuses.items() if status == 0}
            interrupted += any(status is None for status in statuses.values())
            remaining = [p for p in remaining if header_ids(p)[1] not in acknowledged]
            gateway.start()
        assert not remaining, "the sender could not finish within 20 kill/restart rounds"
        assert interrupted >= 2, "the kills must land while instances are being received"
        wait_until(
            lambda: acknowledged <= storescp.received_sop_instance_uids(),
            timeout=120,
            message="every acknowledged instance delivered after the crashes",
        )
        # Deliveries leased by a killed process are taken over once their lease expires.
        wait_until(
            lambda: trace(gateway, _study(series[0]))["summary"] == {"pacs": {"delivered": 60}},
            timeout=60,
            message="every delivery settled after lease expiry",
        )
    finally:
        gateway.stop()


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _study(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_dead_letters_are_explained_and_retried_on_request(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    config = gateway_config(
        tmp_path,
        {
            "cloud": {
                "type": "dicomweb",
                "url": orthanc.dicomweb_url,
                "retry": {"max_attempts": 2, "initial_backoff": 0.1, "max_backoff": 0.2},
            }
        },
        [{"name": "to-cloud", "forward": ["cloud"]}],
    )
    series = make_ct_series(tmp_path / "series", 3, rows=64, cols=64)
    study = _study(series[0])
    orthanc.stop()
    with GatewayProcess(config, tmp_path) as gateway:
        assert set(send_files(series, gateway.dimse_port).values()) == {0}
        wait_until(
            lambda: trace(gateway, study)["summary"] == {"cloud": {"dead": 3}},
            timeout=60,
            message="dead-lettered after max_attempts",
        )
        text = gateway.run_cli("trace", "--config", str(gateway.config_path), study).stdout
        assert "gave up after 2 attempts" in text, text
        orthanc.start()
        retried = gateway.run_cli(
            "retry", "--config", str(gateway.config_path), "cloud", "--study", study
        )
        assert retried.returncode == 0 and "re-queued 3 dead deliveries" in retried.stdout
        wait_until(
            lambda: trace(gateway, study)["summary"] == {"cloud": {"delivered": 3}},
            timeout=60,
            message="delivered after retry",
        )
        unknown = gateway.run_cli("retry", "--config", str(gateway.config_path), "nowhere")
        assert unknown.returncode == 2 and "configured: cloud" in unknown.stderr
