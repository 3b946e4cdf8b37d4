"""StowRsSender against a real Orthanc (DICOMweb plugin) and a scripted HTTP peer on 127.0.0.1.

Orthanc shows what a real archive stores and answers; the scripted peer is a real HTTP/1.1
server for the answers Orthanc never gives (401, 503, failure reasons, bodies that are not JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pydicom
import pytest

from gateway.exceptions import ConfigError, SpoolError
from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.forward.stowrs import StowRsSender, failure_outcome
from tests.harness.data import dataset_bytes, make_ct_series, make_multiframe
from tests.harness.orthanc import OrthancServer
from tests.harness.process import LOOPBACK, free_port

MiB = 1 << 20


# -- instances -------------------------------------------------------------------------------


def outgoing(path: Path, delivery_id: int, **changes: Any) -> OutgoingInstance:
    """An OutgoingInstance for a Part 10 file, as the worker would build it from the spool."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    fields: dict[str, Any] = {
        "delivery_id": delivery_id,
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": str(ds.SOPClassUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "size": path.stat().st_size,
        "open": lambda: path.open("rb"),
        "local_file": lambda: contextlib.nullcontext(path),
    }
    fields.update(changes)
    return OutgoingInstance(**fields)


def ct_batch(tmp_path: Path, count: int, *, seed: int, first_id: int = 1) -> list[OutgoingInstance]:
    paths = make_ct_series(tmp_path / f"ct{seed}", count, rows=64, cols=64, seed=seed)
    return [outgoing(p, first_id + n) for n, p in enumerate(paths)]


def by_id(results: list[SendResult]) -> dict[int, SendResult]:
    return {r.delivery_id: r for r in results}


# -- a scripted HTTP peer --------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None


@dataclass
class Received:
    headers: dict[str, str]
    declared_length: int
    length: int = 0
    sha256: str = ""


@dataclass
class ScriptedPeer:
    """Answers POSTs from ``replies`` in order (the last one repeats); records every request."""

    replies: list[Reply]
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/dicom-web"

    def next_reply(self) -> Reply:
        index = min(len(self.received) - 1, len(self.replies) - 1)
        return self.replies[index]


@contextlib.contextmanager
def scripted_peer(*replies: Reply) -> Iterator[ScriptedPeer]:
    peer = ScriptedPeer(list(replies))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            declared = int(self.headers.get("Content-Length", "0"))
            record = Received(dict(self.headers.items()), declared)
            peer.received.append(record)
            digest = hashlib.sha256()
            try:
                while record.length < declared:
                    chunk = self.rfile.read(min(256 * 1024, declared - record.length))
                    if not chunk:
                        break
                    digest.update(chunk)
                    record.length += len(chunk)
            except OSError:
                pass
            record.sha256 = digest.hexdigest()
            if record.length < declared:  # the client gave up half-way
                self.close_connection = True
                return
            reply = peer.next_reply()
            self.send_response(reply.status)
            if reply.content_type:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    peer.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def store_response(
    *,
    referenced: dict[str, int | None] | None = None,
    failed: dict[str, int | None] | None = None,
) -> bytes:
    """A DICOM JSON Store Instances Response (None: no WarningReason / FailureReason)."""

    def items(entries: dict[str, int | None], reason_tag: str) -> dict[str, Any]:
        values = []
        for uid, reason in entries.items():
            item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [uid]}}
            if reason is not None:
                item[reason_tag] = {"vr": "US", "Value": [reason]}
            values.append(item)
        return {"vr": "SQ", "Value": values} if values else {"vr": "SQ"}

    doc = {
        "00081199": items(referenced or {}, "00081196"),
        "00081198": items(failed or {}, "00081197"),
    }
    return json.dumps(doc).encode()


DICOM_JSON = "application/dicom+json"


# -- Orthanc (the shared ``orthanc`` fixture from tests/conftest.py) -------------------------


@pytest.mark.orthanc
def test_batch_is_stored_byte_for_byte(orthanc: OrthancServer, tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 5, seed=1)
    sender = StowRsSender(name="orthanc", url=orthanc.dicomweb_url)
    try:
        results = sender.send(batch)
    finally:
        sender.close()

    assert [r.delivery_id for r in results] == [i.delivery_id for i in batch]
    assert {(r.outcome, r.status, r.warning) for r in results} == {
        (Outcome.DELIVERED, "HTTP 200", False)
    }
    for inst in batch:
        stored = tmp_path / f"stored-{inst.delivery_id}.dcm"
        stored.write_bytes(orthanc.instance_file(inst.sop_instance_uid))
        with inst.local_file() as sent:
            assert dataset_bytes(stored) == dataset_bytes(sent)


@pytest.mark.orthanc
def test_batch_larger_than_max_batch_bytes_is_split(orthanc: OrthancServer, tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 7, seed=2)
    largest = max(i.size for i in batch)
    bodies: list[int] = []

    def count(request: httpx.Request) -> None:
        bodies.append(int(request.headers["Content-Length"]))

    client = httpx.Client(event_hooks={"request": [count]})
    sender = StowRsSender(
        name="orthanc", url=orthanc.dicomweb_url, max_batch_bytes=2 * largest + 400, client=client
    )
    try:
        results = sender.send(batch)
    finally:
        client.close()

    assert all(r.outcome is Outcome.DELIVERED for r in results), results
    assert len(bodies) == 4  # 2 + 2 + 2 + 1
    assert max(bodies) <= 2 * largest + 400
    assert {i.sop_instance_uid for i in batch} <= orthanc.sop_instance_uids()


@pytest.mark.orthanc
def test_part_orthanc_refuses_fails_alone(orthanc: OrthancServer, tmp_path: Path) -> None:
    good = ct_batch(tmp_path, 2, seed=3)
    junk_path = tmp_path / "junk.dcm"
    junk_path.write_bytes(b"\0" * 128 + b"DICM" + b"this is not a data set" * 20)
    junk = outgoing(
        (tmp_path / "ct3" / "ct_0000.dcm"),
        99,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.999",
        size=junk_path.stat().st_size,
        open=lambda: junk_path.open("rb"),
    )
    sender = StowRsSender(name="orthanc", url=orthanc.dicomweb_url)
    results = by_id(sender.send([good[0], junk, good[1]]))
    sender.close()

    # Orthanc answers 400 and lists only the stored instances in ReferencedSOPSequence.
    assert results[good[0].delivery_id].outcome is Outcome.DELIVERED
    assert results[good[1].delivery_id].outcome is Outcome.DELIVERED
    assert results[99].outcome is Outcome.PERMANENT
    assert results[99].status == "HTTP 400"
    assert {g.sop_instance_uid for g in good} <= orthanc.sop_instance_uids()


def test_connection_refused_is_transient_for_all(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 3, seed=4)
    sender = StowRsSender(name="down", url=f"http://{LOOPBACK}:{free_port()}/dicom-web")
    results = sender.send(batch)
    sender.close()

    assert {(r.outcome, r.status) for r in results} == {(Outcome.TRANSIENT, "connection refused")}
    assert all("cannot connect" in r.detail for r in results)


# -- scripted answers ------------------------------------------------------------------------


def test_401_refreshes_credentials_and_retries_once(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 2, seed=5)
    ok = store_response(referenced={i.sop_instance_uid: None for i in batch})
    tokens = iter(["stale", "fresh"])
    current: list[str] = [next(tokens)]
    refreshed: list[bool] = []

    def refresh() -> None:
        refreshed.append(True)
        current[0] = next(tokens)

    with scripted_peer(Reply(401, b"expired"), Reply(200, ok, DICOM_JSON)) as peer:
        sender = StowRsSender(
            name="cloud",
            url=peer.url(),
            auth=lambda: {"Authorization": f"Bearer {current[0]}"},
            on_unauthorized=refresh,
        )
        results = sender.send(batch)
        sender.close()

    assert refreshed == [True]
    assert [r.headers["Authorization"] for r in peer.received] == ["Bearer stale", "Bearer fresh"]
    assert peer.received[0].length == peer.received[1].length  # the whole body, streamed again
    assert {(r.outcome, r.status) for r in results} == {(Outcome.DELIVERED, "HTTP 200")}


def test_second_401_is_not_retried_again(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 1, seed=6)
    calls: list[int] = []
    with scripted_peer(Reply(401, b"no")) as peer:
        sender = StowRsSender(name="cloud", url=peer.url(), on_unauthorized=lambda: calls.append(1))
        results = sender.send(batch)
    assert len(peer.received) == 2
    assert calls == [1]
    assert results[0].outcome is Outcome.PERMANENT
    assert results[0].status == "HTTP 401"


def test_request_headers_and_body_framing(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 2, seed=7)
    with scripted_peer(Reply(200)) as peer:
        StowRsSender(name="cloud", url=peer.url() + "/").send(batch)
    (request,) = peer.received
    content_type = request.headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert request.headers["Accept"] == DICOM_JSON
    assert request.length == request.declared_length > sum(i.size for i in batch)
    assert "Transfer-Encoding" not in request.headers


def test_the_response_is_asked_for_uncompressed(tmp_path: Path) -> None:
    """It lists every instance; gzip would cost both sides CPU to save a few kilobytes."""
    with scripted_peer(Reply(200)) as peer:
        StowRsSender(name="cloud", url=peer.url()).send(ct_batch(tmp_path, 1, seed=9))
    (request,) = peer.received
    assert request.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(
    ("reply", "outcome", "status"),
    [
        (Reply(503, b"<html>maintenance until 5pm</html>"), Outcome.TRANSIENT, "HTTP 503"),
        (Reply(429, b"slow down"), Outcome.TRANSIENT, "HTTP 429"),
        (Reply(408), Outcome.TRANSIENT, "HTTP 408"),
        (Reply(404, b"no such service"), Outcome.PERMANENT, "HTTP 404"),
        (Reply(200, b"{not json"), Outcome.DELIVERED, "HTTP 200"),
        (Reply(200, b"<ok/>", "application/xml"), Outcome.DELIVERED, "HTTP 200"),
        (Reply(202, b""), Outcome.TRANSIENT, "HTTP 202"),
        (Reply(202, b"{broken", DICOM_JSON), Outcome.TRANSIENT, "HTTP 202"),
    ],
)
def test_whole_request_outcomes(
    tmp_path: Path, reply: Reply, outcome: Outcome, status: str
) -> None:
    batch = ct_batch(tmp_path, 2, seed=8)
    with scripted_peer(reply) as peer:
        results = StowRsSender(name="cloud", url=peer.url()).send(batch)
    assert {(r.outcome, r.status) for r in results} == {(outcome, status)}
    if reply.body and outcome is not Outcome.DELIVERED and reply.status != 202:
        assert reply.body.decode()[:20] in results[0].detail


def test_status_overrides(tmp_path: Path) -> None:
    batch = ct_batch(tmp_path, 1, seed=9)
    with scripted_peer(Reply(501), Reply(403)) as peer:
        sender = StowRsSender(
            name="cloud",
            url=peer.url(),
            permanent_http_statuses={501},
            transient_http_statuses={403},
        )
        assert sender.send(batch)[0].outcome is Outcome.PERMANENT
        assert sender.send(batch)[0].outcome is Outcome.TRANSIENT
    with pytest.raises(ConfigError, match="both"):
        StowRsSender(
            name="x", url="http://h", permanent_http_statuses={500}, transient_http_statuses={500}
        )


def test_per_instance_answers(tmp_path: Path) -> None:
    a, b, c, d, e = ct_batch(tmp_path, 5, seed=10)
    body = store_response(
        referenced={a.sop_instance_uid: None, b.sop_instance_uid: 0xB000},
        failed={c.sop_instance_uid: 0xA700, d.sop_instance_uid: 0xC122},
    )
    with scripted_peer(Reply(409, body, DICOM_JSON)) as peer:
        results = by_id(StowRsSender(name="cloud", url=peer.url()).send([a, b, c, d, e]))

    assert results[a.delivery_id] == SendResult(a.delivery_id, Outcome.DELIVERED, "HTTP 409")
    assert results[b.delivery_id].outcome is Outcome.DELIVERED
    assert results[b.delivery_id].warning
    assert results[b.delivery_id].status == "HTTP 409 0xB000"
    assert results[c.delivery_id].outcome is Outcome.TRANSIENT
    assert results[c.delivery_id].status == "HTTP 409 0xA700"
    assert results[d.delivery_id].outcome is Outcome.PERMANENT
    assert "transfer syntax" in results[d.delivery_id].detail
    # Not mentioned in a 409: the HTTP status decides.
    assert results[e.delivery_id].outcome is Outcome.PERMANENT
    assert results[e.delivery_id].status == "HTTP 409"


def test_instance_not_mentioned_after_200_is_transient(tmp_path: Path) -> None:
    a, b = ct_batch(tmp_path, 2, seed=11)
    body = store_response(referenced={a.sop_instance_uid: None})
    with scripted_peer(Reply(200, body, DICOM_JSON)) as peer:
        results = by_id(StowRsSender(name="cloud", url=peer.url()).send([a, b]))
    assert results[a.delivery_id].outcome is Outcome.DELIVERED
    assert results[b.delivery_id].outcome is Outcome.TRANSIENT
    assert "did not mention" in results[b.delivery_id].detail


@pytest.mark.parametrize(
    ("reason", "outcome"),
    [
        (0xA700, Outcome.TRANSIENT),
        (0xA7FF, Outcome.TRANSIENT),
        (0x0110, Outcome.TRANSIENT),
        (0xC000, Outcome.TRANSIENT),
        (0xC122, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0x0124, Outcome.PERMANENT),
        (0xA900, Outcome.PERMANENT),
        (0x0117, Outcome.PERMANENT),
        (0x0111, Outcome.DELIVERED),
        (None, Outcome.TRANSIENT),
        (0xFFFF, Outcome.TRANSIENT),
    ],
)
def test_failure_reason_table(reason: int | None, outcome: Outcome) -> None:
    assert failure_outcome(reason) is outcome


# -- spool problems --------------------------------------------------------------------------


def test_instance_the_spool_cannot_produce_is_left_out(tmp_path: Path) -> None:
    a, b, c = ct_batch(tmp_path, 3, seed=12)

    def broken() -> BinaryIO:
        raise SpoolError("disk gone")

    unreadable = outgoing(tmp_path / "ct12" / "ct_0001.dcm", b.delivery_id, open=broken)
    wrong_size = outgoing(tmp_path / "ct12" / "ct_0002.dcm", c.delivery_id, size=c.size + 10)
    with scripted_peer(Reply(200)) as peer:
        sender = StowRsSender(name="cloud", url=peer.url())
        results = by_id(sender.send([a, unreadable, wrong_size]))
        sender.close()

    assert results[a.delivery_id] == SendResult(a.delivery_id, Outcome.DELIVERED, "HTTP 200")
    assert results[b.delivery_id].outcome is Outcome.TRANSIENT
    assert results[b.delivery_id].status == "spool"
    assert "disk gone" in results[b.delivery_id].detail
    assert results[c.delivery_id].outcome is Outcome.PERMANENT
    assert "database records" in results[c.delivery_id].detail
    # Two bodies were cut short (nothing stored from them), the third carried only `a`.
    complete = [r for r in peer.received if r.length == r.declared_length]
    assert len(peer.received) == 3
    assert len(complete) == 1
    assert complete[0].declared_length < a.size + 1000


# -- memory ----------------------------------------------------------------------------------


def test_large_instance_is_streamed(tmp_path: Path) -> None:
    path = make_multiframe(tmp_path / "big.dcm", 100 * MiB)
    inst = outgoing(path, 1)

    with scripted_peer(Reply(200)) as peer:
        sender = StowRsSender(name="cloud", url=peer.url())
        tracemalloc.start()
        try:
            (result,) = sender.send([inst])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            sender.close()

    assert result.outcome is Outcome.DELIVERED
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while sending {inst.size / MiB:.0f} MiB"
    (request,) = peer.received
    assert request.length == request.declared_length
    boundary = request.headers["Content-Type"].rpartition("boundary=")[2].encode()
    expected = hashlib.sha256(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n")
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            expected.update(chunk)
    expected.update(b"\r\n--" + boundary + b"--\r\n")
    assert request.sha256 == expected.hexdigest()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://x"},
        {"timeout": 0},
        {"max_batch_bytes": 0},
        {"verify": "/nonexistent/ca.pem"},
    ],
)
def test_bad_configuration_is_reported(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"name": "cloud", "url": "https://archive.example/dicomweb"}
    settings.update(kwargs)
    with pytest.raises(ConfigError, match="cloud"):
        StowRsSender(**settings)


def test_empty_batch_sends_nothing() -> None:
    sender = StowRsSender(name="cloud", url=f"http://{LOOPBACK}:{free_port()}")
    assert sender.send([]) == []
