"""The command center: operator API and dashboard over a running gateway."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.scu import send_files
from tests.harness import GatewayProcess, free_port, make_ct_series, wait_until, write_config

pytestmark = [pytest.mark.dcmtk]


def _token(gateway: GatewayProcess, scope: str) -> str:
    result = gateway.run_cli("token", "--config", str(gateway.config_path), "--scope", scope)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_operator_api_answers_where_a_study_went(tmp_path: Path) -> None:
    down = free_port()  # nobody listens here: every delivery fails and is retried
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={
            "pacs": {
                "type": "dimse",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": down,
                "retry": {"max_attempts": 2, "initial_backoff": 0.1, "max_backoff": 0.2},
            }
        },
        routes=[{"name": "ct-to-pacs", "match": {"Modality": "CT"}, "forward": ["pacs"]}],
        extra={"delivery": {"poll_interval": 0.1}},
    )
    series = make_ct_series(tmp_path / "series", 3, rows=64, cols=64)
    with GatewayProcess(config, tmp_path) as gateway:
        assert set(send_files(series, gateway.dimse_port).values()) == {0}
        admin = {"Authorization": f"Bearer {_token(gateway, 'gateway.admin')}"}
        reader = {"Authorization": f"Bearer {_token(gateway, 'dicomweb.read')}"}
        url = gateway.http_url

        assert httpx.get(f"{url}/admin/queue").status_code == 401
        assert httpx.get(f"{url}/admin/queue", headers=reader).status_code == 403

        def dead() -> bool:
            rows = httpx.get(f"{url}/admin/queue", headers=admin).json()["queue"]
            return {(r["destination"], r["state"]): r["count"] for r in rows} == {
                ("pacs", "dead"): 3
            }

        wait_until(dead, timeout=60, message="dead letters after two failed attempts")
        studies = httpx.get(f"{url}/admin/studies", headers=admin).json()["studies"]
        (study,) = studies
        assert study["status"] == "attention" and study["instances"] == 3
        assert study["destinations"] == {"pacs": {"dead": 3}}
        uid = study["study_instance_uid"]

        trace = httpx.get(f"{url}/admin/studies/{uid}/trace", headers=admin).json()
        instance = trace["instances"][0]
        assert instance["decision"][0].startswith("rule ct-to-pacs: matched")
        delivery = instance["deliveries"][0]
        assert delivery["state"] == "dead" and "gave up after 2 attempts" in delivery["last_detail"]
        assert len(delivery["attempts_log"]) == 2
        missing = httpx.get(f"{url}/admin/studies/1.2.3.999/trace", headers=admin)
        assert missing.status_code == 404 and "never received" in missing.json()["detail"]
        bad = httpx.get(f"{url}/admin/studies/..%2F..%2Fetc/trace", headers=admin)
        assert bad.status_code in (400, 404)

        events = httpx.get(f"{url}/admin/audit", params={"study": uid}, headers=admin).json()
        kinds = {event["kind"] for event in events["events"]}
        assert {"instance.received", "delivery.dead"} <= kinds

        retried = httpx.post(
            f"{url}/admin/destinations/pacs/retry", params={"study": uid}, headers=admin
        )
        assert retried.status_code == 200 and retried.json()["requeued"] == 3
        unknown = httpx.post(f"{url}/admin/destinations/nowhere/retry", headers=admin)
        assert unknown.status_code == 404 and "configured: pacs" in unknown.json()["detail"]

        page = httpx.get(f"{url}/admin/")
        assert page.status_code == 200 and "command center" in page.text
        assert uid not in page.text, "the public page carries no data"
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
