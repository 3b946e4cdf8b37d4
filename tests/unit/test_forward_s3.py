"""S3Sender against a real SeaweedFS: keys, bytes, metadata, duplicates, failures, memory.

Only what SeaweedFS cannot be made to answer (SlowDown, AccessDenied, KMS) is played by a small
scripted client; everything else is a real S3 request to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from botocore.exceptions import ClientError

from gateway.forward.base import Outcome, OutgoingInstance
from gateway.forward.s3 import S3Sender
from gateway.s3client import make_client
from gateway.spool.s3url import parse_s3_url
from tests.harness.data import make_ct_series
from tests.harness.process import free_port
from tests.harness.seaweedfs import SeaweedFS

pytestmark = pytest.mark.s3

MiB = 1 << 20


def outgoing(path: Path, delivery_id: int, **changes: Any) -> OutgoingInstance:
    """An OutgoingInstance for a Part 10 file, as the worker builds it (sha256 from the db)."""
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
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    fields.update(changes)
    return OutgoingInstance(**fields)


def series(tmp_path: Path, count: int = 3, seed: int = 1) -> list[OutgoingInstance]:
    paths = make_ct_series(tmp_path / f"ct{seed}", count, rows=32, cols=32, seed=seed)
    return [outgoing(path, n + 1) for n, path in enumerate(paths)]


class Recording:
    """A real S3 client that counts the calls made on it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return call


def seaweed_client(server: SeaweedFS, **changes: Any) -> Any:
    options: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "region": server.region,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
    }
    options.update(changes)
    return make_client(**options)


def sender_for(
    url: str, client_factory: Callable[[], Any], *, key_template: str | None = None
) -> S3Sender:
    extra = {} if key_template is None else {"key_template": key_template}
    return S3Sender(name="lake", location=parse_s3_url(url), client_factory=client_factory, **extra)


def body(server: SeaweedFS, bucket: str, key: str) -> bytes:
    data: bytes = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


# -- against SeaweedFS -------------------------------------------------------------------------


def test_each_instance_lands_under_its_key_with_metadata(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    batch = series(tmp_path)
    sender = sender_for(f"s3://{s3_bucket}/lake/in", lambda: seaweed_client(seaweedfs_server))
    results = sender.send(batch)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3
    for inst, result in zip(batch, results, strict=True):
        key = (
            f"lake/in/{inst.study_instance_uid}/{inst.series_instance_uid}/"
            f"{inst.sop_instance_uid}.dcm"
        )
        assert result.status == "HTTP 200" and not result.warning
        assert result.detail == f"stored s3://{s3_bucket}/{key}"
        with inst.open() as source:
            assert body(seaweedfs_server, s3_bucket, key) == source.read()
        head = seaweedfs_server.client().head_object(Bucket=s3_bucket, Key=key)
        assert head["ContentType"] == "application/dicom"
        assert head["Metadata"] == {
            "sha256": inst.sha256,
            "study-instance-uid": inst.study_instance_uid,
            "series-instance-uid": inst.series_instance_uid,
            "sop-instance-uid": inst.sop_instance_uid,
            "sop-class-uid": inst.sop_class_uid,
            "transfer-syntax-uid": inst.transfer_syntax_uid,
        }
    sender.close()


def test_key_template_and_a_sha256_the_caller_does_not_know(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    [inst] = series(tmp_path, 1)
    expected = inst.sha256
    sender = sender_for(
        f"s3://{s3_bucket}",
        lambda: seaweed_client(seaweedfs_server),
        key_template="by-class/{sop_class}/study={study}/{sop}",
    )
    [result] = sender.send([OutgoingInstance(**{**_fields(inst), "sha256": None})])
    key = f"by-class/{inst.sop_class_uid}/study={inst.study_instance_uid}/{inst.sop_instance_uid}"
    assert result.outcome is Outcome.DELIVERED, result
    head = seaweedfs_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert head["Metadata"]["sha256"] == expected


def test_resending_the_same_bytes_is_a_counted_duplicate_without_upload(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    batch = series(tmp_path, 2)
    client = Recording(seaweed_client(seaweedfs_server))
    sender = sender_for(f"s3://{s3_bucket}/p", lambda: client)
    assert all(r.outcome is Outcome.DELIVERED for r in sender.send(batch))
    assert client.calls.count("upload_fileobj") == 2
    again = sender.send(batch)
    assert client.calls.count("upload_fileobj") == 2, "a duplicate must not be uploaded again"
    for result in again:
        assert result.outcome is Outcome.DELIVERED and result.warning
        assert "already stored" in result.detail and "not uploaded again" in result.detail


def test_other_bytes_under_the_key_are_replaced_and_said_so(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    first, second = series(tmp_path, 2)
    s3 = seaweedfs_server.client()
    keys = {}
    for inst, metadata in ((first, {"sha256": "0" * 64}), (second, {})):
        keys[inst.delivery_id] = (
            f"{inst.study_instance_uid}/{inst.series_instance_uid}/{inst.sop_instance_uid}.dcm"
        )
        s3.put_object(
            Bucket=s3_bucket, Key=keys[inst.delivery_id], Body=b"older", Metadata=metadata
        )
    sender = sender_for(f"s3://{s3_bucket}", lambda: seaweed_client(seaweedfs_server))
    for inst, result in zip((first, second), sender.send([first, second]), strict=True):
        assert result.outcome is Outcome.DELIVERED and not result.warning
        assert result.detail.startswith("replaced s3://") and "corrected re-send" in result.detail
        with inst.open() as source:
            assert body(seaweedfs_server, s3_bucket, keys[inst.delivery_id]) == source.read()


@pytest.mark.parametrize(
    ("storage_class", "outcome"),
    [("STANDARD_IA", Outcome.DELIVERED), ("BOGUS", Outcome.PERMANENT)],
)
def test_storage_class_is_sent_and_a_refused_one_is_permanent(
    tmp_path: Path,
    seaweedfs_server: SeaweedFS,
    s3_bucket: str,
    storage_class: str,
    outcome: Outcome,
) -> None:
    # Config validation refuses BOGUS; here it reaches S3 to see how a 400 is settled.
    [inst] = series(tmp_path, 1)
    sender = S3Sender(
        name="lake",
        location=parse_s3_url(f"s3://{s3_bucket}"),
        client_factory=lambda: seaweed_client(seaweedfs_server),
        storage_class=storage_class,
    )
    [result] = sender.send([inst])
    assert result.outcome is outcome, result
    if outcome is Outcome.PERMANENT:
        assert result.status == "HTTP 400 InvalidStorageClass"
        assert "destinations.lake" in result.detail
        return
    key = f"{inst.study_instance_uid}/{inst.series_instance_uid}/{inst.sop_instance_uid}.dcm"
    head = seaweedfs_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert head["StorageClass"] == storage_class


def test_a_missing_bucket_is_permanent_with_the_fix(
    tmp_path: Path, seaweedfs_server: SeaweedFS
) -> None:
    batch = series(tmp_path, 2)
    sender = sender_for("s3://no-such-bucket-here/x", lambda: seaweed_client(seaweedfs_server))
    for result in sender.send(batch):
        assert result.outcome is Outcome.PERMANENT, result
        assert "NoSuchBucket" in result.status
        assert "'no-such-bucket-here' does not exist" in result.detail
        assert "destinations.lake.url" in result.detail


def test_wrong_credentials_are_permanent(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    [inst] = series(tmp_path, 1)
    sender = sender_for(
        f"s3://{s3_bucket}",
        lambda: seaweed_client(seaweedfs_server, secret_access_key="not-the-secret"),
    )
    [result] = sender.send([inst])
    assert result.outcome is Outcome.PERMANENT, result
    assert "credentials" in result.detail or "denied" in result.detail


def test_unreachable_s3_is_transient_for_the_whole_batch(tmp_path: Path) -> None:
    batch = series(tmp_path, 3)
    closed = f"http://127.0.0.1:{free_port()}"
    sender = sender_for(
        "s3://any-bucket/x",
        lambda: make_client(
            endpoint_url=closed,
            region="us-east-1",
            access_key_id="k",
            secret_access_key="s",
            max_attempts=1,
        ),
    )
    started = time.monotonic()
    results = sender.send(batch)
    assert time.monotonic() - started < 10
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 3
    assert {r.status for r in results} <= {"connection refused", "connect failed"}
    assert closed in results[0].detail
    assert all(r.detail.startswith("not tried: ") for r in results[1:])


def test_a_uid_that_is_no_uid_names_no_key(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    [inst] = series(tmp_path, 1)
    client = Recording(seaweed_client(seaweedfs_server))
    sender = sender_for(f"s3://{s3_bucket}", lambda: client)
    bad = OutgoingInstance(**{**_fields(inst), "series_instance_uid": "1.2/../../etc"})
    [result] = sender.send([bad])
    assert result.outcome is Outcome.PERMANENT and result.status == "invalid UID"
    assert "{series}" in result.detail
    assert client.calls == []


def test_metadata_holds_only_values_that_are_uids(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    [inst] = series(tmp_path, 1)
    sender = sender_for(f"s3://{s3_bucket}", lambda: seaweed_client(seaweedfs_server))
    odd = OutgoingInstance(**{**_fields(inst), "transfer_syntax_uid": "1.2\r\nX-Evil: 1"})
    [result] = sender.send([odd])
    assert result.outcome is Outcome.DELIVERED, result
    key = f"{inst.study_instance_uid}/{inst.series_instance_uid}/{inst.sop_instance_uid}.dcm"
    metadata = seaweedfs_server.client().head_object(Bucket=s3_bucket, Key=key)["Metadata"]
    assert "transfer-syntax-uid" not in metadata and "x-evil" not in metadata
    assert metadata["sop-instance-uid"] == inst.sop_instance_uid


def test_spool_bytes_that_are_not_the_recorded_ones_are_not_left_in_the_bucket(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    [inst] = series(tmp_path, 1)
    sender = sender_for(f"s3://{s3_bucket}", lambda: seaweed_client(seaweedfs_server))
    [result] = sender.send([OutgoingInstance(**{**_fields(inst), "sha256": "f" * 64})])
    assert result.outcome is Outcome.PERMANENT and result.status == "spool"
    listing = seaweedfs_server.client().list_objects_v2(Bucket=s3_bucket)
    assert listing.get("KeyCount", 0) == 0


def test_an_unreadable_spool_copy_is_transient(tmp_path: Path) -> None:
    [inst] = series(tmp_path, 1)

    def broken() -> io.BufferedReader:
        raise OSError("disk gone")

    sender = sender_for("s3://b-1", lambda: ScriptedS3())
    [result] = sender.send([OutgoingInstance(**{**_fields(inst), "open": broken})])
    assert (result.outcome, result.status) == (Outcome.TRANSIENT, "spool")
    assert "disk gone" in result.detail


# -- what SeaweedFS cannot be made to say ------------------------------------------------------


class ScriptedS3:
    """HeadObject answers 404; upload_fileobj raises what the test says (after reading)."""

    def __init__(self, upload_error: Exception | None = None) -> None:
        self.meta = type("Meta", (), {"endpoint_url": "https://s3.example"})()
        self.upload_error = upload_error

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        raise _client_error("404", "", 404, "HeadObject")

    def upload_fileobj(self, fileobj: Any, bucket: str, key: str, **kwargs: Any) -> None:
        while fileobj.read(MiB):
            pass
        if self.upload_error is not None:
            raise self.upload_error


def _client_error(code: str, message: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("code", "message", "status", "outcome", "says"),
    [
        ("SlowDown", "Please reduce your request rate.", 503, Outcome.TRANSIENT, "retrying later"),
        ("InternalError", "We encountered an internal error", 500, Outcome.TRANSIENT, "busy"),
        ("RequestTimeout", "not read from or written to", 400, Outcome.TRANSIENT, "busy"),
        ("AccessDenied", "Access Denied", 403, Outcome.PERMANENT, "s3:PutObject"),
        ("InvalidAccessKeyId", "does not exist", 403, Outcome.PERMANENT, "credentials"),
        ("KMS.NotFoundException", "Invalid keyId", 400, Outcome.PERMANENT, "kms:GenerateDataKey"),
        (
            "AccessDenied",
            "not authorized to perform kms:GenerateDataKey",
            403,
            Outcome.PERMANENT,
            "sse_kms_key_id",
        ),
        (
            "InvalidStorageClass",
            "The storage class is not valid",
            400,
            Outcome.PERMANENT,
            "destinations.lake",
        ),
    ],
)
def test_s3_answers_are_classified(
    tmp_path: Path, code: str, message: str, status: int, outcome: Outcome, says: str
) -> None:
    [inst] = series(tmp_path, 1)
    error = _client_error(code, message, status, "PutObject")
    sender = sender_for("s3://b-1/p", lambda: ScriptedS3(error))
    [result] = sender.send([inst])
    assert result.outcome is outcome, result
    assert code in result.status and f"HTTP {status}" in result.status
    assert says in result.detail


def test_send_never_raises_for_an_unexpected_error(tmp_path: Path) -> None:
    batch = series(tmp_path, 2)
    sender = sender_for("s3://b-1/p", lambda: ScriptedS3(RuntimeError("boom")))
    results = sender.send(batch)
    assert [(r.outcome, r.status) for r in results] == [(Outcome.TRANSIENT, "internal error")] * 2


# -- memory ------------------------------------------------------------------------------------


class PatternSource(io.RawIOBase):
    """`size` bytes of a repeating pattern, generated as read: nothing behind it on disk."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._left = size
        self._block = bytes(range(256)) * 4096  # 1 MiB

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._left, len(self._block))
        view[:count] = self._block[:count]
        self._left -= count
        return count


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Samples this process's resident size every 10 ms; yields [growth] filled in at exit."""
    baseline = _rss()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    growth = [0]
    try:
        yield growth
    finally:
        stop.set()
        thread.join()
        growth[0] = max(peak[0], _rss()) - baseline


def test_a_200_mb_object_streams_in_parts_with_bounded_memory(
    seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    size = 200 * MiB
    digest = hashlib.sha256()
    with PatternSource(size) as source:
        while chunk := source.read(4 * MiB):
            digest.update(chunk)
    uids = {
        "study_instance_uid": "1.2.826.0.1.3680043.10.1",
        "series_instance_uid": "1.2.826.0.1.3680043.10.1.1",
        "sop_instance_uid": "1.2.826.0.1.3680043.10.1.1.1",
    }
    inst = OutgoingInstance(
        delivery_id=1,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=size,
        open=lambda: io.BufferedReader(PatternSource(size), MiB),
        local_file=lambda: contextlib.nullcontext(Path("/nonexistent")),
        sha256=digest.hexdigest(),
        **uids,
    )
    sender = sender_for(
        f"s3://{s3_bucket}/big?part_size_mb=5", lambda: seaweed_client(seaweedfs_server)
    )
    with peak_rss_growth() as growth:
        [result] = sender.send([inst])
    assert result.outcome is Outcome.DELIVERED, result
    print(f"peak RSS growth while sending 200 MiB: {growth[0] / MiB:.0f} MiB")
    assert growth[0] < 120 * MiB, "a 200 MiB object must stream, not sit in memory"
    key = f"big/{uids['study_instance_uid']}/{uids['series_instance_uid']}/"
    key += f"{uids['sop_instance_uid']}.dcm"
    head = seaweedfs_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == size
    assert "-" in head["ETag"], "uploaded as a multipart upload"
    stored = hashlib.sha256()
    for chunk in (
        seaweedfs_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].iter_chunks(4 * MiB)
    ):
        stored.update(chunk)
    assert stored.hexdigest() == digest.hexdigest()


def _fields(inst: OutgoingInstance) -> dict[str, Any]:
    return {name: getattr(inst, name) for name in OutgoingInstance.__dataclass_fields__}


# -- telemetry ---------------------------------------------------------------------------------


def test_each_attempt_is_an_s3_put_span(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.forward.traced import TracedSender
    from gateway.telemetry import Telemetry

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracer_provider=provider)
    [good] = series(tmp_path, 1, seed=5)
    [bad] = series(tmp_path, 1, seed=6)
    for url, inst in ((f"s3://{s3_bucket}", good), ("s3://no-such-bucket-here", bad)):
        inner = sender_for(url, lambda: seaweed_client(seaweedfs_server))
        TracedSender(inner, destination="lake", kind="s3", telemetry=telemetry).send([inst])
    ok, failed = (s for s in spans.get_finished_spans() if s.name == "S3 PUT send")
    assert ok.kind is trace.SpanKind.CLIENT and ok.attributes is not None
    assert ok.attributes["http.status_code"] == 200
    assert ok.attributes["gateway.destination"] == "lake"
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["http.status_code"] == 404
