"""The access audit: every HTTP request and DIMSE association is recorded and can be queried
by study and by actor (`dicom-gateway audit`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
from pynetdicom import AE

from gateway.auditlog import recent_events
from gateway.auth.factory import builtin_issuer
from gateway.auth.principal import SCOPE_READ, SCOPE_WRITE
from tests.e2e.scu import send_files
from tests.harness import LOOPBACK, make_ct_series, stow, wait_until
from tests.harness.gateway import REPO_ROOT
from tests.security.support import STUDY, running_gateway

VERIFICATION = "1.2.840.10008.1.1"


def _cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(workdir / "gateway.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
        check=False,
    )


def test_http_requests_are_audited_and_queryable(tmp_path: Path) -> None:
    with running_gateway(tmp_path, auth={"mode": "builtin"}) as gw:
        issuer = builtin_issuer(gw.settings)
        alice = {"Authorization": f"Bearer {issuer.issue('alice', [SCOPE_READ, SCOPE_WRITE])}"}
        with httpx.Client(base_url=gw.url) as client:
            assert client.get(f"/studies/{STUDY}/metadata", headers=alice).status_code == 404
            assert client.get("/studies", params={"PatientName": "DOE^JANE"}, headers=alice)
            assert client.get(f"/studies/{STUDY}/series").status_code == 401
            assert client.get("/healthz").status_code == 200
            files = make_ct_series(tmp_path / "ct", 2, rows=16, cols=16)
            assert stow(client, "/studies", files, headers=alice).status_code == 200
        stored_study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        db = gw.gateway.db

        # The answer goes out first; its audit event is committed right after.
        wait_until(
            lambda: (
                [e["kind"] for e in recent_events(db, actor="alice")].count("http.request") == 3
            ),
            timeout=10,
        )
        events = recent_events(db, actor="alice")
        requests = [e for e in events if e["kind"] == "http.request"]
        assert [(json.loads(e["detail"])["route"], e["outcome"]) for e in requests] == [
            ("/studies/{study}/metadata", "404"),
            ("/studies", "200"),
            ("/studies", "200"),
        ]
        assert requests[0]["study_instance_uid"] == STUDY
        search = json.loads(requests[1]["detail"])
        assert search["query_keys"] == ["PatientName"] and "DOE" not in requests[1]["detail"]
        assert search["peer"].startswith(f"{LOOPBACK}:") and search["method"] == "GET"
        received = [e for e in events if e["kind"] == "instance.received"]
        assert len(received) == 2 and {e["study_instance_uid"] for e in received} == {stored_study}

        wait_until(lambda: len(recent_events(db, study_uid=STUDY, actor="anonymous")) == 1)
        anonymous = recent_events(db, study_uid=STUDY, actor="anonymous")
        assert [(e["kind"], e["outcome"]) for e in anonymous] == [("http.request", "401")]
        assert all(
            "/healthz" not in (e["detail"] or "") for e in recent_events(db, actor="anonymous")
        )

        by_study = _cli(tmp_path, "audit", "--study", stored_study)
        assert by_study.returncode == 0, by_study.stderr
        lines = by_study.stdout.strip().splitlines()
        assert len(lines) == 2 and all("instance.received" in line for line in lines)
        by_actor = _cli(tmp_path, "audit", "--actor", "alice", "--json")
        assert by_actor.returncode == 0, by_actor.stderr
        parsed = json.loads(by_actor.stdout)
        assert [e["kind"] for e in parsed].count("http.request") == 3
        assert parsed[0]["detail"]["route"] == "/studies/{study}/metadata"
        neither = _cli(tmp_path, "audit")
        assert neither.returncode == 2 and "--study" in neither.stderr


def _associate(port: int, *, calling: str, called: str = "GATEWAY") -> object:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 10
    return ae, ae.associate(LOOPBACK, port, ae_title=called)


def test_dimse_associations_are_audited(tmp_path: Path) -> None:
    with running_gateway(tmp_path, auth={"mode": "builtin"}) as gw:
        port = gw.gateway.dimse_port
        files = make_ct_series(tmp_path / "ct", 2, rows=16, cols=16)
        assert set(send_files(files, port, calling_aet="CT1").values()) == {0}

        ae, wrong_called = _associate(port, calling="CT2", called="NOT-US")
        assert wrong_called.is_rejected  # type: ignore[attr-defined]
        ae.shutdown()  # type: ignore[attr-defined]

        ae, aborted = _associate(port, calling="CT3")
        assert aborted.is_established  # type: ignore[attr-defined]
        aborted.abort()  # type: ignore[attr-defined]
        ae.shutdown()  # type: ignore[attr-defined]

        db = gw.gateway.db
        wait_until(
            lambda: any(e["kind"] == "association.aborted" for e in recent_events(db, actor="CT3")),
            timeout=10,
        )
        ct1 = [(e["kind"], e["outcome"]) for e in recent_events(db, actor="CT1")]
        assert ct1 == [
            ("association.accepted", "accepted"),
            ("instance.received", "stored"),
            ("instance.received", "stored"),
            ("association.released", "released"),
        ]
        accepted = json.loads(recent_events(db, actor="CT1")[0]["detail"])
        assert accepted["peer"] == LOOPBACK and accepted["called_ae"] == "GATEWAY"

        (rejected,) = recent_events(db, actor="CT2")
        assert rejected["kind"] == "association.rejected"
        assert "called AE title not recognised" in rejected["detail"]
        ct3 = [e["kind"] for e in recent_events(db, actor="CT3")]
        assert ct3 == ["association.accepted", "association.aborted"]
