"""Hostile HTTP input against a running gateway process: refused, logged, process alive,
nothing else touched.

Covers path-traversal UIDs (in the URL and inside a STOW-RS part), oversized request heads and
multipart part headers, too many parts, a truncated multipart body, a slow-loris client (a
request head trickling in), a body upload that stalls, and a client that connects and says
nothing. Timeouts are set low (`http.limits`) so the test is quick.
"""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.harness import (
    LOOPBACK,
    GatewayProcess,
    free_port,
    make_ct_series,
    multipart_related,
    stow,
    wait_until,
    write_config,
)
from tests.security.hostile import staging_leftovers, stored_state

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5


class Target:
    def __init__(self, process: GatewayProcess, workdir: Path, token: str) -> None:
        self.process = process
        self.workdir = workdir
        self.auth = {"Authorization": f"Bearer {token}"}
        self.client = httpx.Client(base_url=process.http_url, timeout=30)
        self.baseline: tuple[dict[str, str], list[tuple[object, ...]]] = ({}, [])

    def assert_unharmed(self) -> None:
        assert self.process.alive, self.process.log_text()[-3000:]
        assert self.client.get("/healthz").status_code == 200
        assert stored_state(self.workdir) == self.baseline, "stored data changed"
        wait_until(lambda: staging_leftovers(self.workdir) == [], timeout=10)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("hostile-http")
    config = write_config(
        workdir / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=workdir / "spool",
        database=workdir / "gateway.db",
        destinations={},
        routes=[],
        extra={
            "http": {
                "max_parts": 5,
                "limits": {
                    "header_timeout": HEADER_TIMEOUT,
                    "idle_timeout": IDLE_TIMEOUT,
                    "max_header_bytes": 8192,
                },
            }
        },
    )
    process = GatewayProcess(config, workdir)
    process.start()
    minted = process.run_cli(
        "token", "--config", str(config), "--scope", "dicomweb.read dicomweb.write"
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert minted.stdout.count("\n") == 1 and token.count(".") == 2, "only the token on stdout"
    target = Target(process, workdir, token)
    good = make_ct_series(workdir / "good", 2, rows=32, cols=32)
    assert stow(target.client, "/studies", good, headers=target.auth).status_code == 200
    target.baseline = stored_state(workdir)
    assert len(target.baseline[1]) == 2
    yield target
    target.client.close()
    process.stop()


def _raw(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes (or `wait`)."""
    with socket.create_connection((LOOPBACK, port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


@pytest.mark.parametrize(
    "path",
    [
        "/studies/..%2F..%2F..%2Fetc%2Fpasswd/metadata",
        "/studies/1.2.3/series/..%2F..%2F..%2Ftmp/instances",
        "/studies/1.2.3/series/1.2.4/instances/..%2Fx/frames/1",
        "/studies/1.2.3%00/metadata",
        "/studies/" + "1." * 40 + "1/metadata",  # longer than 64 characters
    ],
)
def test_path_traversal_uids_in_urls_are_refused(target: Target, path: str) -> None:
    response = target.client.get(path, headers=target.auth)
    assert response.status_code in (400, 404), response.text
    target.assert_unharmed()


def test_path_traversal_uid_inside_a_stow_part_is_refused(target: Target, tmp_path: Path) -> None:
    (evil,) = make_ct_series(tmp_path, 1, rows=32, cols=32, seed=9)
    ds = pydicom.dcmread(evil)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom rightly warns about the invalid UID
        ds.StudyInstanceUID = "1.2.3/../../../../tmp/evil"
        ds.save_as(evil, enforce_file_format=True)
    response = stow(target.client, "/studies", [evil], headers=target.auth)
    assert response.status_code == 409, response.text
    assert not list(Path("/tmp").glob("evil*"))
    target.assert_unharmed()
    assert "not a valid DICOM UID" in target.process.log_text()


def test_oversized_request_head_is_refused(target: Target) -> None:
    port = target.process.http_port
    assert port is not None
    huge_header = b"GET /studies HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
    assert _raw(port, huge_header).startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))
    huge_url = b"GET /studies?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw(port, huge_url).startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))
    target.assert_unharmed()


def test_oversized_part_headers_and_too_many_parts_are_refused(
    target: Target, tmp_path: Path
) -> None:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\nX-Pad: {'a' * 20_000}\r\n\r\n"
        f"DICM\r\n--{boundary}--\r\n"
    ).encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = target.client.post(
        "/studies", content=body, headers={**target.auth, "Content-Type": content_type}
    )
    assert response.status_code == 400, response.text

    target.assert_unharmed()

    # http.max_parts is 5: parts are ingested as they complete, the sixth is refused.
    files = make_ct_series(tmp_path, 6, rows=16, cols=16, seed=7)
    response = stow(target.client, "/studies", files, headers=target.auth)
    assert response.status_code in (202, 413), response.text
    stored, rows = stored_state(target.workdir)
    assert len(rows) - len(target.baseline[1]) <= 5
    target.baseline = (stored, rows)
    target.assert_unharmed()


def test_truncated_multipart_body_is_refused(target: Target, tmp_path: Path) -> None:
    (only,) = make_ct_series(tmp_path / "one", 1, rows=32, cols=32, seed=5)
    chunks, length, content_type = multipart_related([only])
    body = b"".join(chunks)[: length - 400]  # cut inside the part: no closing boundary
    response = target.client.post(
        "/studies", content=body, headers={**target.auth, "Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    assert "closing boundary" in response.text
    target.assert_unharmed()


def test_truncated_second_part_keeps_only_the_complete_first(
    target: Target, tmp_path: Path
) -> None:
    # Parts are ingested as they complete (streaming STOW-RS): the first is stored and
    # acknowledged, the cut-off second leaves nothing behind.
    first, second = make_ct_series(tmp_path / "two", 2, rows=32, cols=32, seed=6)
    chunks, length, content_type = multipart_related([first, second])
    body = b"".join(chunks)[: length - 400]
    response = target.client.post(
        "/studies", content=body, headers={**target.auth, "Content-Type": content_type}
    )
    assert response.status_code == 202, response.text
    files, rows = stored_state(target.workdir)
    new_uids = {row[0] for row in rows} - {row[0] for row in target.baseline[1]}
    assert new_uids == {str(pydicom.dcmread(first).SOPInstanceUID)}
    target.baseline = (files, rows)
    target.assert_unharmed()


def test_slow_loris_request_head_is_cut_off(target: Target) -> None:
    port = target.process.http_port
    assert port is not None
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.sendall(b"GET /studies HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        answer = b""
        for _ in range(40):  # one header byte every 0.1 s: never completes the head
            try:
                sock.sendall(b"X")
            except OSError:
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.1)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # reset: we kept sending after the server closed
                chunk = b""
            answer += chunk
            if not chunk:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "the server kept a trickling request head open"
        assert closed_after < HEADER_TIMEOUT + 2
        assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    # ... and a client that connects and sends nothing at all.
    started = time.monotonic()
    assert _raw(port, b"", wait=HEADER_TIMEOUT + 5).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < HEADER_TIMEOUT + 2
    assert "no complete request head" in target.process.log_text()
    target.assert_unharmed()


def test_stalled_upload_is_cut_off_and_its_staging_file_removed(
    target: Target, tmp_path: Path
) -> None:
    port = target.process.http_port
    assert port is not None
    (instance,) = make_ct_series(tmp_path, 1, rows=64, cols=64, seed=3)
    chunks, length, content_type = multipart_related([instance])
    body = b"".join(chunks)
    head = (
        f"POST /studies HTTP/1.1\r\nHost: x\r\nAuthorization: {target.auth['Authorization']}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    _raw(port, head + body[: length // 2], wait=IDLE_TIMEOUT + 10)
    assert time.monotonic() - started < IDLE_TIMEOUT + 5
    assert "request body stalled" in target.process.log_text()
    target.assert_unharmed()


def test_a_client_that_stops_reading_the_response_is_cut_off(
    target: Target, tmp_path: Path
) -> None:
    port = target.process.http_port
    assert port is not None
    files = make_ct_series(tmp_path, 4, rows=2048, cols=2048, seed=11)  # 32 MiB of pixels
    assert stow(target.client, "/studies", files, headers=target.auth).status_code == 200
    target.baseline = stored_state(target.workdir)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.sendall(
            (
                f"GET /studies/{study} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {target.auth['Authorization']}\r\n"
                'Accept: multipart/related; type="application/dicom"\r\n\r\n'
            ).encode()
        )
        # Read nothing for a while: the gateway's send buffer fills and its timer runs out.
        wait_until(
            lambda: "response not read" in target.process.log_text(), timeout=IDLE_TIMEOUT + 15
        )
        received = 0
        sock.settimeout(10)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except OSError:
            pass  # reset by the gateway's abort
        assert received < 30 << 20, "the whole study was delivered to a client that stalled"
    target.assert_unharmed()
