"""The idle probe end to end: a PACS whose queue failover emptied is noticed when it is back.

Real peers on 127.0.0.1: DCMTK storescu sends to the gateway subprocess; `pacs-a` is a storescp
started once (to own its port) and stopped, so connections are refused; `pacs-b` is a running
storescp. Once failover has moved every delivery to `pacs-b`, nothing is queued for `pacs-a`:
the gateway must still notice its return, by C-ECHO, without storing anything there. The same
for a `dicomweb` destination, a real Orthanc that is killed and started again (QIDO-RS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.scu import header_ids
from tests.harness import (
    GatewayProcess,
    StoreSCP,
    free_port,
    make_ct_series,
    require_binary,
    storescu,
    wait_until,
    write_config,
)
from tests.harness.orthanc import OrthancServer

pytestmark = [pytest.mark.dcmtk]

FAST_RETRY = {"max_attempts": 100, "initial_backoff": 0.1, "max_backoff": 0.3}
PROBE_INTERVAL = 0.5


def test_a_down_pacs_with_nothing_queued_is_echoed_back_up(
    tmp_path: Path, storescp: StoreSCP
) -> None:
    require_binary("storescu")
    pacs_b = storescp
    pacs_a = StoreSCP(tmp_path / "pacs-a" / "received", aet="PACSA")
    pacs_a.start()
    pacs_a.stop()  # its port is now closed
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={
            "pacs-a": {
                "type": "dimse",
                "ae_title": "PACSA",
                "host": "127.0.0.1",
                "port": pacs_a.port,
                "retry": FAST_RETRY,
                "workers": 2,  # two workers compete for each probe slot
                "failover": {"to": "pacs-b", "after": 1},
            },
            "pacs-b": {
                "type": "dimse",
                "ae_title": pacs_b.aet,
                "host": "127.0.0.1",
                "port": pacs_b.port,
                "retry": FAST_RETRY,
            },
        },
        routes=[{"name": "ct-to-pacs-a", "match": {"Modality": "CT"}, "forward": ["pacs-a"]}],
        extra={
            "delivery": {"poll_interval": 0.05},
            "health": {"failure_threshold": 2, "probe_interval": PROBE_INTERVAL},
        },
    )
    series = make_ct_series(tmp_path / "ct", 3, rows=32, cols=32)
    uids = {header_ids(path)[1] for path in series}
    try:
        with GatewayProcess(config, tmp_path) as gateway:
            token = gateway.run_cli(
                "token", "--config", str(config), "--scope", "gateway.admin"
            ).stdout.strip()
            admin = {"Authorization": f"Bearer {token}"}

            def cli(*args: str) -> str:
                result = gateway.run_cli(*args, "--config", str(config))
                assert result.returncode == 0, result.stderr
                return result.stdout

            def pacs_a_health() -> dict[str, Any]:
                rows = json.loads(cli("destinations", "--json"))
                return next(row for row in rows if row["destination"] == "pacs-a")

            def metric() -> str:
                return httpx.get(f"{gateway.http_url}/metrics", headers=admin).text

            sent = storescu(series, gateway.dimse_port, called_aet=gateway.ae_title)
            assert sent.returncode == 0, sent.stderr
            wait_until(
                lambda: uids <= pacs_b.received_sop_instance_uids(),
                timeout=60,
                message="the study failed over to pacs-b",
            )
            wait_until(lambda: pacs_a_health()["pending"] == 0, timeout=30, message="emptied")

            # nothing to probe with: C-ECHO to a closed port keeps it down and says why
            wait_until(
                lambda: "(idle probe, C-ECHO)" in (pacs_a_health()["last_error"] or ""),
                timeout=20,
                message="an idle probe's error recorded",
            )
            down = pacs_a_health()
            assert down["state"] == "down"
            assert down["last_error"].startswith("connect failed - cannot open a TCP connection")
            failures = down["consecutive_failures"]
            time.sleep(6 * PROBE_INTERVAL)
            later = pacs_a_health()
            assert later["state"] == "down"
            probes = later["consecutive_failures"] - failures
            # one probe per interval across both workers (not two), allowing for timing jitter
            assert 3 <= probes <= 8, f"{probes} idle probes in {6 * PROBE_INTERVAL:g}s"
            assert 'gateway_destination_up{destination="pacs-a"} 0.0' in metric()
            table = cli("destinations")
            assert "pacs-a: nothing queued; idle probe (C-ECHO, no instance sent) every 0.5s" in (
                table
            )

            # pacs-a is back: noticed within a few intervals, with no instance sent
            pacs_a.start()
            wait_until(
                lambda: pacs_a_health()["state"] == "up",
                timeout=10 * PROBE_INTERVAL,
                message="pacs-a up by C-ECHO",
            )
            back = pacs_a_health()
            assert back["consecutive_failures"] == 0 and back["last_success_at"] is not None
            assert back["next_probe_at"] is None
            assert 'gateway_destination_up{destination="pacs-a"} 1.0' in metric()
            log = pacs_a.log_text()
            assert "Received Echo Request" in log, log[-2000:]
            assert "Received Store Request" not in log
            assert pacs_a.received_files() == []
            audit = json.loads(cli("audit", "--actor", "pacs-a", "--json"))
            ups = [event for event in audit if event["kind"] == "destination.up"]
            assert len(ups) == 1 and ups[0]["detail"]["probe"] == "C-ECHO", ups
            # nothing more was probed once up
            echoes = log.count("Received Echo Request")
            time.sleep(3 * PROBE_INTERVAL)
            assert pacs_a.log_text().count("Received Echo Request") == echoes
    finally:
        pacs_a.stop()


@pytest.mark.orthanc
def test_a_down_dicomweb_archive_with_nothing_queued_is_searched_back_up(
    tmp_path: Path, storescp: StoreSCP, orthanc: OrthancServer
) -> None:
    """The same for `dicomweb`: Orthanc stops, failover empties its queue, QIDO-RS notices."""
    require_binary("storescu")
    archive_url = orthanc.dicomweb_url  # its ports stay the same across a restart
    orthanc.kill()
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={
            "archive": {
                "type": "dicomweb",
                "url": archive_url,
                "timeout": 5,
                "retry": FAST_RETRY,
                "failover": {"to": "pacs-b", "after": 1},
            },
            "pacs-b": {
                "type": "dimse",
                "ae_title": storescp.aet,
                "host": "127.0.0.1",
                "port": storescp.port,
                "retry": FAST_RETRY,
            },
        },
        routes=[{"name": "all", "forward": ["archive"]}],
        extra={
            "delivery": {"poll_interval": 0.05},
            "health": {"failure_threshold": 2, "probe_interval": PROBE_INTERVAL},
        },
    )
    series = make_ct_series(tmp_path / "ct", 2, rows=32, cols=32)
    uids = {header_ids(path)[1] for path in series}
    with GatewayProcess(config, tmp_path) as gateway:

        def archive_health() -> dict[str, Any]:
            result = gateway.run_cli("destinations", "--config", str(config), "--json")
            assert result.returncode == 0, result.stderr
            return next(r for r in json.loads(result.stdout) if r["destination"] == "archive")

        sent = storescu(series, gateway.dimse_port, called_aet=gateway.ae_title)
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: uids <= storescp.received_sop_instance_uids(), timeout=60, message="failover"
        )
        wait_until(
            lambda: "(idle probe, QIDO-RS)" in (archive_health()["last_error"] or ""),
            timeout=20,
            message="a QIDO-RS probe's error recorded",
        )
        assert archive_health()["state"] == "down" and archive_health()["pending"] == 0
        orthanc.start()
        wait_until(
            lambda: archive_health()["state"] == "up",
            timeout=10 * PROBE_INTERVAL,
            message="archive up by QIDO-RS",
        )
        assert orthanc.instance_count() == 0, "a search, no instance stored"
