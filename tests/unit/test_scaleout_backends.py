"""Scale-out backends without servers: S3 URL options, S3 error messages, PostgreSQL SQL dialect.

The behaviour against real servers is in tests/contract; these pin down what needs no server:
config validation, what is sent for SSE-KMS, and how each failure reads to an operator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from gateway.config import parse_settings
from gateway.db.postgres import split_url, to_pyformat
from gateway.exceptions import ConfigError, SpoolError
from gateway.spool.s3 import S3Spool
from gateway.spool.s3url import DEFAULT_PART_SIZE, parse_s3_url


def test_s3_url_options() -> None:
    plain = parse_s3_url("s3://my-bucket")
    assert (plain.bucket, plain.prefix, plain.sse_kms, plain.part_size) == (
        "my-bucket",
        "",
        False,
        DEFAULT_PART_SIZE,
    )
    full = parse_s3_url(
        "s3://my.bucket/site-a/spool/?sse_kms_key_id=arn:aws:kms:eu-west-1:1:key/abc&part_size_mb=8"
    )
    assert full.prefix == "site-a/spool"
    assert full.object_key("1/2/3.dcm") == "site-a/spool/1/2/3.dcm"
    assert full.sse_kms and full.sse_kms_key_id == "arn:aws:kms:eu-west-1:1:key/abc"
    assert full.part_size == 8 * 1024 * 1024
    assert parse_s3_url("s3://b-1/p?sse=aws:kms").sse_kms


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "use s3://BUCKET/PREFIX"),
        ("s3://Upper_Case/x", "not a valid S3 bucket name"),
        ("s3://ok-bucket/a//b", "empty"),
        ("s3://ok-bucket/x?region=eu-west-1", "unknown option 'region'"),
        ("s3://ok-bucket/x?sse=AES256", "aws:kms"),
        ("s3://ok-bucket/x?part_size_mb=1", "from 5 to 5120"),
        ("s3://ok-bucket/x?sse_kms_key_id=", "empty"),
    ],
)
def test_bad_s3_urls_are_config_errors_naming_the_key(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"storage\.spool") as info:
        parse_settings({"storage": {"spool": url}}, base_dir=Path("/"))
    assert message in str(info.value)


class FakeS3:
    """Records calls; raises what a test tells it to."""

    def __init__(self, **failures: Exception) -> None:
        self.meta = SimpleNamespace(endpoint_url="http://127.0.0.1:1")
        self.failures = failures
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _call(self, name: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((name, kwargs))
        if name in self.failures:
            raise self.failures[name]
        return {}

    def head_bucket(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("head_bucket", **kwargs)

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        kwargs["Body"].read()
        return self._call("put_object", **kwargs)

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> dict[str, Any]:
        return self._call("upload_file", bucket=bucket, key=key, **kwargs)


def client_error(code: str, status: int, operation: str = "HeadBucket") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


def test_sse_kms_is_requested_on_every_upload(tmp_path: Path) -> None:
    client = FakeS3()
    spool = S3Spool(
        "s3://bucket-a/p?sse_kms_key_id=alias/gw&part_size_mb=5",
        client=client,
        staging_dir=tmp_path,
    )
    small = tmp_path / "small.dcm"
    small.write_bytes(b"x" * 1000)
    big = tmp_path / "big.dcm"
    big.write_bytes(b"y" * (5 * 1024 * 1024))
    spool.put(small, "1/2/3.dcm")
    spool.put(big, "1/2/4.dcm")
    (_, put), (_, upload) = client.calls[1:]
    assert put["Key"] == "p/1/2/3.dcm"
    assert (put["ServerSideEncryption"], put["SSEKMSKeyId"]) == ("aws:kms", "alias/gw")
    assert upload["key"] == "p/1/2/4.dcm"
    assert upload["ExtraArgs"]["ServerSideEncryption"] == "aws:kms"
    assert upload["ExtraArgs"]["SSEKMSKeyId"] == "alias/gw"
    assert not small.exists() and not big.exists()


def test_missing_bucket_fails_at_start_with_the_fix(tmp_path: Path) -> None:
    client = FakeS3(head_bucket=client_error("404", 404))
    with pytest.raises(SpoolError, match="does not exist") as info:
        S3Spool("s3://no-such-bucket/x", client=client, staging_dir=tmp_path)
    assert "aws s3 mb s3://no-such-bucket" in str(info.value)


def test_access_denied_names_the_permissions(tmp_path: Path) -> None:
    client = FakeS3(head_bucket=client_error("403", 403))
    with pytest.raises(SpoolError, match="denied") as info:
        S3Spool("s3://bucket-b", client=client, staging_dir=tmp_path)
    assert "s3:PutObject" in str(info.value)


def test_unreachable_s3_is_no_reason_to_refuse_start_but_fails_puts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    client = FakeS3(head_bucket=down, put_object=down)
    with caplog.at_level(logging.WARNING):
        spool = S3Spool("s3://bucket-c", client=client, staging_dir=tmp_path)
    assert "not reachable" in caplog.text
    source = tmp_path / "in.dcm"
    source.write_bytes(b"DICM")
    with pytest.raises(SpoolError, match="unreachable"):
        spool.put(source, "1/2/3.dcm")
    assert not source.exists(), "the staged file is consumed even when the upload fails"


def test_placeholders_become_pyformat_outside_quotes() -> None:
    assert to_pyformat("SELECT ? , '?%', \"a?\" WHERE x LIKE '%a' AND y = ?") == (
        "SELECT %s , '?%%', \"a?\" WHERE x LIKE '%%a' AND y = %s"
    )
    assert to_pyformat("SELECT 100 % 7") == "SELECT 100 %% 7"


def test_postgres_url_pool_size_and_password_masking() -> None:
    libpq, size, shown = split_url("postgresql://gw:s3cret@db.internal:5432/gateway?pool_size=4")
    assert size == 4 and "pool_size" not in libpq and libpq.endswith("/gateway")
    assert "s3cret" not in shown and "***" in shown
    _libpq, size, _shown = split_url("postgresql://gw@db/gateway?sslmode=require")
    assert size == 10 and "sslmode=require" in _libpq
    with pytest.raises(ConfigError, match="pool_size"):
        split_url("postgresql://gw@db/gateway?pool_size=lots")


def test_staging_folders_of_dead_processes_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    import gateway.spool.s3 as s3

    monkeypatch.setattr(s3.tempfile, "tempdir", str(tmp_path))
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    root = tmp_path / f"dicom-gateway-staging-{s3.os.getuid()}"
    stale = root / f"{finished.stdout.strip()}-abc"
    (stale / "partial.dcm").parent.mkdir(parents=True)
    (stale / "partial.dcm").write_bytes(b"half an object")
    first = s3._new_staging_dir()
    second = s3._new_staging_dir()
    assert not stale.exists()
    assert first.is_dir() and second.is_dir() and first != second, "ours are kept, one per spool"
