"""Each sender's idle probe against a real peer: C-ECHO, QIDO-RS, HeadBucket (no instance sent).

Peers on 127.0.0.1: a pynetdicom SCP in this process (so a test can make it refuse), Orthanc
with DICOMweb, a small http.server answering a chosen status, SeaweedFS. A closed port is one
`free_port()` returned and nobody listens on.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway.forward.base import OutgoingInstance, ProbeResult, SendResult, idle_probe
from gateway.forward.cstore import CStoreSender
from gateway.forward.stowrs import StowRsSender
from gateway.forward.traced import TracedSender
from gateway.telemetry import Telemetry
from tests.harness.orthanc import OrthancServer
from tests.harness.process import LOOPBACK, free_port

# -- dimse: C-ECHO ---------------------------------------------------------------------------


@pytest.fixture
def scp() -> Iterator[tuple[AE, int]]:
    """A pynetdicom SCP (AE PACS) accepting Verification; tests may change what it accepts."""
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server((LOOPBACK, port), block=False)
    try:
        yield ae, port
    finally:
        server.shutdown()


def cstore(port: int, **changes: Any) -> CStoreSender:
    options: dict[str, Any] = {
        "name": "pacs",
        "ae_title": "PACS",
        "host": LOOPBACK,
        "port": port,
        "acse_timeout": 5,
        "dimse_timeout": 5,
        "network_timeout": 5,
    }
    return CStoreSender(**(options | changes))


def test_c_echo_to_a_live_peer_is_up(scp: tuple[AE, int]) -> None:
    result = cstore(scp[1]).probe()
    assert result == ProbeResult(
        "up", "C-ECHO", "0x0000", f"PACS@{LOOPBACK}:{scp[1]} answered C-ECHO"
    )


def test_c_echo_to_a_closed_port_is_down() -> None:
    result = cstore(free_port()).probe()
    assert (result.state, result.status) == ("down", "connect failed")
    assert "cannot open a TCP connection to PACS@127.0.0.1:" in result.detail


def test_a_rejected_association_stays_down_with_the_reason(scp: tuple[AE, int]) -> None:
    ae, port = scp
    ae.require_called_aet = True
    result = cstore(port, ae_title="NOTPACS").probe()
    assert (result.state, result.status) == ("down", "association rejected")
    assert "rejected the association" in result.detail and "Called AE" in result.detail


def test_a_peer_refusing_verification_is_degraded() -> None:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage)  # a storage-only SCP
    port = free_port()
    server = ae.start_server((LOOPBACK, port), block=False)
    try:
        result = cstore(port).probe()
    finally:
        server.shutdown()
    assert (result.state, result.status) == ("degraded", "context rejected")


# -- dicomweb: QIDO-RS -----------------------------------------------------------------------


class _Answers(http.server.BaseHTTPRequestHandler):
    statuses: list[int]
    seen: list[tuple[str, str, dict[str, str]]]

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, dict(self.headers)))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        body = b'[{"0010,0010": "a patient"}]'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def web() -> Iterator[type[_Answers]]:
    handler = type("Answers", (_Answers,), {"statuses": [200], "seen": []})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://{LOOPBACK}:{server.server_address[1]}/dicom-web"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def stow(url: str, **changes: Any) -> StowRsSender:
    return StowRsSender(name="cloud", url=url, timeout=5, **changes)


def test_qido_probe_sends_one_search_with_the_destination_auth(web: type[_Answers]) -> None:
    sender = stow(web.url, auth=lambda: {"Authorization": "Bearer t"})  # type: ignore[attr-defined]
    try:
        result = sender.probe()
    finally:
        sender.close()
    assert (result.state, result.probe, result.status) == ("up", "QIDO-RS", "HTTP 200")
    ((method, path, headers),) = web.seen
    assert (method, path) == ("GET", "/dicom-web/studies?limit=1")
    assert headers["Accept"] == "application/dicom+json"
    assert headers["Authorization"] == "Bearer t"


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (204, "up"),
        (403, "degraded"),
        (404, "degraded"),
        (405, "degraded"),
        (429, "down"),
        (500, "down"),
        (503, "down"),
    ],
)
def test_qido_probe_judges_the_answer_as_a_delivery_would(
    web: type[_Answers], status: int, state: str
) -> None:
    web.statuses = [status]
    result = stow(web.url).probe()  # type: ignore[attr-defined]
    assert (result.state, result.status) == (state, f"HTTP {status}")


def test_a_401_after_refreshing_credentials_stays_down(web: type[_Answers]) -> None:
    web.statuses = [401, 401]
    refreshed: list[bool] = []
    sender = stow(
        web.url,  # type: ignore[attr-defined]
        auth=lambda: {"Authorization": "Bearer old"},
        on_unauthorized=lambda: refreshed.append(True),
    )
    result = sender.probe()
    assert (result.state, result.status) == ("down", "credentials refused")
    assert "renew them" in result.detail
    assert refreshed == [True] and len(web.seen) == 2, "refreshed once, asked again"


def test_a_401_then_a_fresh_token_is_up(web: type[_Answers]) -> None:
    web.statuses = [401, 200]
    result = stow(web.url, on_unauthorized=lambda: None).probe()  # type: ignore[attr-defined]
    assert result.state == "up" and len(web.seen) == 2


def test_qido_probe_to_a_closed_port_is_down() -> None:
    result = stow(f"http://{LOOPBACK}:{free_port()}/dicom-web").probe()
    assert (result.state, result.status) == ("down", "connection refused")


@pytest.mark.orthanc
def test_qido_probe_against_orthanc_is_up(orthanc: OrthancServer) -> None:
    sender = stow(orthanc.dicomweb_url)
    try:
        result = sender.probe()
    finally:
        sender.close()
    assert (result.state, result.status) == ("up", "HTTP 200"), result


# -- s3: HeadBucket --------------------------------------------------------------------------


@pytest.mark.s3
def test_head_bucket_is_up_for_the_bucket_and_down_without_it(
    seaweedfs_server: Any, s3_bucket: str
) -> None:
    from tests.unit.test_forward_s3 import seaweed_client, sender_for

    present = sender_for(f"s3://{s3_bucket}/lake", lambda: seaweed_client(seaweedfs_server))
    result = present.probe()
    assert (result.state, result.probe, result.status) == ("up", "HeadBucket", "HTTP 200")
    missing = sender_for("s3://no-such-bucket/lake", lambda: seaweed_client(seaweedfs_server))
    result = missing.probe()
    assert (result.state, result.status) == ("down", "HTTP 404"), result
    assert "does not exist" in result.detail


@pytest.mark.s3
def test_head_bucket_against_a_closed_port_is_down(seaweedfs_server: Any) -> None:
    from tests.unit.test_forward_s3 import seaweed_client, sender_for

    closed = f"http://{LOOPBACK}:{free_port()}"
    sender = sender_for(
        "s3://lake/x", lambda: seaweed_client(seaweedfs_server, endpoint_url=closed)
    )
    result = sender.probe()
    assert result.state == "down" and result.status in ("connection refused", "connect failed")


# -- wrappers ----------------------------------------------------------------------------------


class _Plain:
    """A sender without an idle probe."""

    name = "plain"

    def send(self, batch: list[OutgoingInstance]) -> list[SendResult]:
        return []

    def close(self) -> None:
        pass


def test_wrappers_forward_the_probe_or_say_there_is_none(tmp_path: Path) -> None:
    from gateway.transform.sender import TransformingSender

    telemetry = Telemetry.from_environment(
        service_version="test", instance_id="unit", environ={"OTEL_TRACES_EXPORTER": "none"}
    )
    try:
        refused = stow(f"http://{LOOPBACK}:{free_port()}")
        traced = TracedSender(refused, destination="cloud", kind="dicomweb", telemetry=telemetry)
        result = idle_probe(traced)
        assert result is not None and result.state == "down"
        plain = TracedSender(_Plain(), destination="p", kind="dimse", telemetry=telemetry)  # type: ignore[arg-type]
        assert idle_probe(plain) is None
        assert idle_probe(_Plain()) is None  # type: ignore[arg-type]
        assert idle_probe(TransformingSender(_Plain(), None)) is None  # type: ignore[arg-type]
    finally:
        telemetry.shutdown()
