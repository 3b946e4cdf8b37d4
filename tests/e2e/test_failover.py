"""Destination health end to end: a PACS goes down, its work fails over, and it comes back.

Real peers on 127.0.0.1: DCMTK storescu sends to the gateway subprocess; `pacs-a` is a
storescp that was started once (to own its port) and stopped, so connections are refused;
`pacs-b` is a running storescp. Later `pacs-a` starts again on the same port; with its queue
emptied by failover, the idle probe (C-ECHO) notices.
"""

from __future__ import annotations

import json
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

pytestmark = [pytest.mark.dcmtk]

FAST_RETRY = {"max_attempts": 100, "initial_backoff": 0.1, "max_backoff": 0.3}
AFTER = 2  # seconds down before failing over


def test_a_down_pacs_fails_over_exactly_once_and_is_probed_back_up(
    tmp_path: Path, storescp: StoreSCP
) -> None:
    require_binary("storescu")
    pacs_b = storescp
    pacs_a = StoreSCP(tmp_path / "pacs-a" / "received", aet="PACSA")
    pacs_a.start()
    pacs_a.stop()  # its port is now closed: every association is refused
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
                "failover": {"to": "pacs-b", "after": AFTER},
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
            "delivery": {"poll_interval": 0.1},
            "health": {"failure_threshold": 2, "probe_interval": 0.5},
        },
    )
    first = make_ct_series(tmp_path / "first", 4, rows=64, cols=64)
    first_uids = {header_ids(path)[1] for path in first}
    try:
        with GatewayProcess(config, tmp_path) as gateway:
            token = gateway.run_cli(
                "token", "--config", str(config), "--scope", "gateway.admin"
            ).stdout.strip()
            admin = {"Authorization": f"Bearer {token}"}

            def health() -> dict[str, Any]:
                response = httpx.get(f"{gateway.http_url}/admin/destinations", headers=admin)
                assert response.status_code == 200, response.text
                return {d["destination"]: d for d in response.json()["destinations"]}

            def cli(*args: str) -> str:
                result = gateway.run_cli(*args, "--config", str(config))
                assert result.returncode == 0, result.stderr
                return result.stdout

            sent = storescu(first, gateway.dimse_port, called_aet=gateway.ae_title)
            assert sent.returncode == 0, sent.stderr

            # pacs-a goes down: the API, the CLI and /metrics say so
            wait_until(lambda: health()["pacs-a"]["state"] == "down", timeout=30, message="down")
            down = health()["pacs-a"]
            assert down["last_error"].startswith("connect failed")
            assert down["failover"] == {"to": "pacs-b", "after": AFTER}
            assert health()["pacs-b"]["state"] == "up"
            table = cli("destinations")
            assert any(line.split()[:2] == ["pacs-a", "down"] for line in table.splitlines()), table
            assert "pacs-a: fails over to pacs-b after 2s down" in table
            assert "failover pacs-a: -> pacs-b after 2s down" in cli("check-config")
            assert "Destination health" in httpx.get(f"{gateway.http_url}/admin/").text
            metrics = httpx.get(f"{gateway.http_url}/metrics", headers=admin).text
            assert 'gateway_destination_up{destination="pacs-a"} 0.0' in metrics
            assert 'gateway_destination_up{destination="pacs-b"} 1.0' in metrics

            # after `after` seconds, every instance reaches pacs-b, once
            wait_until(
                lambda: first_uids <= pacs_b.received_sop_instance_uids(),
                timeout=60,
                message="the study at pacs-b",
            )
            study = _study_of(first[0])
            trace = _trace(gateway, study)
            for instance in trace["instances"]:
                by_destination = {d["destination"]: d for d in instance["deliveries"]}
                assert set(by_destination) == {"pacs-a", "pacs-b"}, instance["deliveries"]
                origin, copy = by_destination["pacs-a"], by_destination["pacs-b"]
                assert origin["state"] == "failed_over"
                assert origin["note"].startswith(f"failed over to pacs-b (delivery {copy['id']})")
                assert copy["state"] == "delivered" and copy["origin_id"] == origin["id"]
                assert copy["rule"] == "ct-to-pacs-a"
                assert copy["note"].startswith("failed over from pacs-a: down since ")
                assert "last error connect failed" in copy["note"]
                delivered = [a for a in copy["attempts_log"] if a["outcome"] == "delivered"]
                assert len(delivered) == 1
                assert instance["decision"][0].startswith("rule ct-to-pacs-a: matched -> pacs-a")
            events = [e["kind"] for e in trace["events"]]
            assert "delivery.failed_over" in events
            text = cli("trace", study)
            assert "-> pacs-a (rule ct-to-pacs-a): failed_over" in text
            assert "failed over from pacs-a: down since" in text
            assert pacs_b.log_text().count("Received Store Request") == len(first), (
                "pacs-b received each instance exactly once"
            )
            assert health()["pacs-a"]["state"] == "down", "nothing left to probe with"
            assert "pacs-a: nothing queued; idle probe (C-ECHO, no instance sent)" in cli(
                "destinations"
            )

            # pacs-a comes back; with nothing queued, the idle probe (C-ECHO) notices
            pacs_a.start()
            wait_until(lambda: health()["pacs-a"]["state"] == "up", timeout=10, message="echo")
            assert not pacs_a.received_files(), "an echo, no instance"
            second = make_ct_series(tmp_path / "second", 3, rows=64, cols=64, seed=1)
            second_uids = {header_ids(path)[1] for path in second}
            sent = storescu(second, gateway.dimse_port, called_aet=gateway.ae_title)
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: health()["pacs-a"]["state"] == "up", timeout=30, message="up")
            wait_until(
                lambda: second_uids <= pacs_a.received_sop_instance_uids(),
                timeout=30,
                message="the new study at pacs-a",
            )
            back = health()["pacs-a"]
            assert back["consecutive_failures"] == 0 and back["last_success_at"] is not None
            metrics = httpx.get(f"{gateway.http_url}/metrics", headers=admin).text
            assert 'gateway_destination_up{destination="pacs-a"} 1.0' in metrics
            # failed-over instances stay settled: not sent to pacs-a when it returns
            assert not first_uids & pacs_a.received_sop_instance_uids()
            assert not second_uids & pacs_b.received_sop_instance_uids()
            assert pacs_b.log_text().count("Received Store Request") == len(first)
            audit = cli("audit", "--actor", "pacs-a", "--json")
            kinds = [event["kind"] for event in json.loads(audit)]
            assert kinds.count("destination.down") == 1 and kinds.count("destination.up") == 1

            # the runbook's way to send failed-over instances to the primary as well
            assert cli("retry", "pacs-a", "--failed-over", "--study", study).startswith(
                f"re-queued {len(first)} failed-over deliveries of study {study} for pacs-a"
            )
            wait_until(
                lambda: first_uids <= pacs_a.received_sop_instance_uids(),
                timeout=30,
                message="the failed-over study at pacs-a too",
            )
            assert pacs_b.log_text().count("Received Store Request") == len(first)
    finally:
        pacs_a.stop()


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _trace(gateway: GatewayProcess, study: str) -> dict[str, Any]:
    result = gateway.run_cli("trace", "--config", str(gateway.config_path), "--json", study)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))
