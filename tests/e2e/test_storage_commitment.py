"""Storage commitment end to end: DCMTK storescu stores, a modality asks, the gateway reports.

The gateway runs as its own process from its YAML config. DCMTK's storescu sends the
instances; the modality (pynetdicom, tests/harness/commitment.py: DCMTK has no storage
commitment SCU) sends N-ACTION on another association and receives the N-EVENT-REPORT on its
own listener, whose address the gateway knows from `dimse.storage_commitment.peers` only.
The durability test kills the gateway with SIGKILL after it answered N-ACTION and before it
could report; the restarted gateway still reports.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.e2e.scu import header_ids
from tests.harness import (
    GatewayProcess,
    free_port,
    make_ct_series,
    require_binary,
    storescu,
    wait_until,
    write_config,
)
from tests.harness.commitment import Modality

pytestmark = [pytest.mark.dcmtk]

CT = "1.2.840.10008.5.1.4.1.1.2"


def gateway_config(tmp_path: Path, modality_port: int, **commitment: Any) -> Path:
    settings: dict[str, Any] = {
        "policy": "stored",
        "timeout": 2,
        "poll_interval": 0.1,
        "acse_timeout": 1,
        "dimse_timeout": 2,
        "peers": {"MODALITY": {"host": "127.0.0.1", "port": modality_port}},
        "retry": {"initial_backoff": 0.2, "max_backoff": 1},
    }
    settings.update(commitment)
    return write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={},
        routes=[],
        extra={"dimse": {"storage_commitment": settings}},
    )


def commitments(tmp_path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM commitments ORDER BY id").fetchall()


@pytest.fixture
def modality() -> Iterator[Modality]:
    peer = Modality("MODALITY", free_port())
    yield peer
    peer.stop_listening()


def stored_series(tmp_path: Path, gateway: GatewayProcess, count: int) -> list[tuple[str, str]]:
    require_binary("storescu")
    files = make_ct_series(tmp_path / "series", count, rows=32, cols=32)
    sent = storescu(files, gateway.dimse_port, called_aet=gateway.ae_title, calling_aet="MODALITY")
    assert sent.returncode == 0, sent.stderr
    return [header_ids(path)[:2] for path in files]


def test_stored_instances_are_committed_and_a_missing_one_fails(
    tmp_path: Path, modality: Modality
) -> None:
    modality.listen()
    with GatewayProcess(gateway_config(tmp_path, modality.port), tmp_path) as gateway:
        stored = stored_series(tmp_path, gateway, 3)
        missing = (CT, generate_uid())
        status, some_missing = modality.request(
            gateway.dimse_port, [*stored, missing], called_ae=gateway.ae_title
        )
        assert int(status.Status) == 0x0000, status
        report = modality.report(timeout=30)
        assert (report.event_type, report.transaction_uid) == (2, some_missing)
        assert sorted(report.committed) == sorted(stored)
        assert report.failed == [(*missing, 0x0112)]
        assert report.roles == (False, True)

        status, all_stored = modality.request(gateway.dimse_port, stored)
        assert int(status.Status) == 0x0000, status
        report = modality.report(timeout=30)
        assert (report.event_type, report.transaction_uid) == (1, all_stored)
        assert sorted(report.committed) == sorted(stored) and report.failed == []

        wait_until(
            lambda: [r["state"] for r in commitments(tmp_path)] == ["reported", "reported"],
            timeout=10,
            message="both transactions recorded as reported",
        )
        listed = gateway.run_cli("commitments", "--config", str(gateway.config_path), "--json")
        assert listed.returncode == 0, listed.stderr
        by_uid = {row["transaction_uid"]: row for row in json.loads(listed.stdout)}
        assert by_uid[some_missing]["failed"][0]["failure_reason"] == "0x0112"
        assert by_uid[all_stored]["event_type"] == 1
        audit = gateway.run_cli(
            "audit", "--config", str(gateway.config_path), "--actor", "MODALITY"
        )
        assert "commitment.requested" in audit.stdout and "commitment.reported" in audit.stdout


def test_a_request_survives_sigkill_and_is_reported_after_restart(
    tmp_path: Path, modality: Modality
) -> None:
    gateway = GatewayProcess(gateway_config(tmp_path, modality.port), tmp_path)
    gateway.start()
    try:
        stored = stored_series(tmp_path, gateway, 2)
        status, transaction_uid = modality.request(gateway.dimse_port, stored)
        assert int(status.Status) == 0x0000, status
        gateway.kill()  # answered, but the modality's listener is down: nothing reported yet
        (row,) = commitments(tmp_path)
        assert row["transaction_uid"] == transaction_uid and row["reported_at"] is None
        assert modality.reports.empty()

        modality.listen()
        gateway.start()
        report = modality.report(timeout=60)
        assert (report.event_type, report.transaction_uid) == (1, transaction_uid)
        assert sorted(report.committed) == sorted(stored)
        wait_until(
            lambda: commitments(tmp_path)[0]["state"] == "reported",
            timeout=10,
            message="reported after the restart",
        )
        time.sleep(0.5)
        assert modality.reports.empty(), "reported once"
    finally:
        gateway.stop()


def test_bad_requests_are_refused_and_leave_no_row(tmp_path: Path, modality: Modality) -> None:
    with GatewayProcess(gateway_config(tmp_path, modality.port), tmp_path) as gateway:
        status, _ = modality.request(gateway.dimse_port, [(CT, generate_uid())], action_type=7)
        assert int(status.Status) == 0x0123
        status, _ = modality.request(gateway.dimse_port, [(CT, "1.2.3.abc")])
        assert int(status.Status) == 0x0115
        assert "item 1: SOP Instance UID is not a valid UID" in str(status.ErrorComment)
        status, _ = Modality("STRANGER", free_port()).request(
            gateway.dimse_port, [(CT, generate_uid())]
        )
        assert int(status.Status) == 0x0124
        assert commitments(tmp_path) == []
        assert gateway.echo() == 0
