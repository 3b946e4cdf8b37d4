"""The scale-out spool: objects in an S3 bucket (AWS S3 or any S3-compatible store).

Durability: `put` returns only after S3 answered the PUT (or CompleteMultipartUpload), so an
acknowledged instance is in the bucket. Objects of `part_size_mb` or more go up as a multipart
upload (boto3's transfer manager, parts in parallel, aborted on failure). Received bytes are
staged in a local temporary folder first (pynetdicom writes the data set there), uploaded from
it, then removed; the staging folder therefore needs room for the objects in flight only.

Reads stream: `open` and `open_range` wrap the GET body in a buffered file object;
`open_seekable` reads by ranged GETs (frames fetch only their bytes, gateway/spool/ranged.py);
`local_file` downloads in chunks to a temporary file (path-based senders only). Endpoint,
region and credentials come from the standard AWS chain (environment, shared config, instance
or task role). Every botocore error is turned into a SpoolError with a fix in `_translated`,
the one place that knows botocore's errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from gateway.exceptions import PastEndError, SpoolError
from gateway.s3client import BAD_CREDENTIALS as _BAD_CREDENTIALS
from gateway.s3client import DENIED as _DENIED
from gateway.s3client import MISSING_OBJECT as _MISSING_OBJECT
from gateway.s3client import client_error as _client_error
from gateway.s3client import last_exception as _last
from gateway.s3client import make_client
from gateway.spool.base import SpoolEntry, StoredObject
from gateway.spool.ranged import open_ranged
from gateway.spool.s3url import S3Location, parse_s3_url

log = logging.getLogger(__name__)

__all__ = ["S3Spool", "make_client"]

_CHUNK = 1024 * 1024


class S3Spool:
    """Spool objects under `s3://bucket/prefix/`."""

    def __init__(
        self, url: str, *, client: Any | None = None, staging_dir: Path | None = None
    ) -> None:
        self.location: S3Location = parse_s3_url(url)
        self.url = url
        self._client = client if client is not None else make_client()
        self._endpoint = str(getattr(self._client.meta, "endpoint_url", "S3"))
        if staging_dir is None:
            staging_dir = _new_staging_dir()
            weakref.finalize(self, shutil.rmtree, staging_dir, ignore_errors=True)
        staging_dir.mkdir(parents=True, exist_ok=True)
        self._staging = staging_dir
        self._transfer = TransferConfig(
            multipart_threshold=self.location.part_size,
            multipart_chunksize=self.location.part_size,
            max_concurrency=4,
            use_threads=True,
        )
        self._extra: dict[str, Any] = {"ContentType": "application/dicom"}
        if self.location.sse_kms:
            self._extra["ServerSideEncryption"] = "aws:kms"
            if self.location.sse_kms_key_id:
                self._extra["SSEKMSKeyId"] = self.location.sse_kms_key_id
        self._probe()

    @property
    def staging_dir(self) -> Path:
        return self._staging

    def put(self, source: Path, key: str) -> StoredObject:
        try:
            object_key = self._object_key(key)
            try:
                size, digest = _size_and_sha256(source)
            except OSError as exc:
                raise SpoolError(f"cannot read {source} to upload it: {exc.strerror}") from exc
            extra = {**self._extra, "Metadata": {"sha256": digest}}
            with self._translated("upload", key):
                if size < self.location.part_size:
                    with source.open("rb") as body:
                        self._client.put_object(
                            Bucket=self.location.bucket,
                            Key=object_key,
                            Body=body,
                            ContentLength=size,
                            **extra,
                        )
                else:
                    self._client.upload_file(
                        str(source),
                        self.location.bucket,
                        object_key,
                        ExtraArgs=extra,
                        Config=self._transfer,
                    )
        finally:
            with contextlib.suppress(OSError):
                source.unlink()
        return StoredObject(key=key, size=size, sha256=digest)

    def put_deferred(self, source: Path, key: str) -> StoredObject:
        return self.put(source, key)  # an answered PUT is durable; nothing is left to sync

    def sync(self, keys: Sequence[str]) -> None:
        pass

    def open(self, key: str) -> BinaryIO:
        with self._translated("read", key):
            response = self._client.get_object(
                Bucket=self.location.bucket, Key=self._object_key(key)
            )
        return io.BufferedReader(_BodyReader(response["Body"], self, key), _CHUNK)

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        if start < 0 or end <= start:
            raise ValueError(f"invalid byte range {start}-{end}")
        with self._translated("read", key):
            response = self._client.get_object(
                Bucket=self.location.bucket,
                Key=self._object_key(key),
                Range=f"bytes={start}-{end - 1}",
            )
        return io.BufferedReader(_BodyReader(response["Body"], self, key), _CHUNK)

    def open_seekable(self, key: str, size: int) -> BinaryIO:
        return open_ranged(self, key, size)

    @contextlib.contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        handle, name = tempfile.mkstemp(prefix="download-", suffix=".dcm", dir=self._staging)
        path = Path(name)
        try:
            try:
                with os.fdopen(handle, "wb") as target, self.open(key) as source:
                    shutil.copyfileobj(source, target, _CHUNK)
            except OSError as exc:
                raise SpoolError(f"cannot download {key} from S3: {exc}") from exc
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def delete(self, key: str) -> None:
        with self._translated("delete", key):
            self._client.delete_object(Bucket=self.location.bucket, Key=self._object_key(key))

    def exists(self, key: str) -> bool:
        try:
            with self._translated("read", key):
                self._client.head_object(Bucket=self.location.bucket, Key=self._object_key(key))
        except _MissingObjectError:
            return False
        return True

    def list_objects(self) -> Iterator[SpoolEntry]:
        prefix = self._display_prefix()
        with self._translated("list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    yield SpoolEntry(
                        key=str(item["Key"])[len(prefix) :],
                        size=int(item["Size"]),
                        modified=item["LastModified"].timestamp(),
                    )

    def check(self) -> None:
        with self._translated("check"):
            self._client.head_bucket(Bucket=self.location.bucket)

    def _probe(self) -> None:
        """Fail at start-up on a missing bucket or refused access; S3 being down is no reason."""
        try:
            self.check()
        except _UnreachableError as exc:
            log.warning("S3 spool not reachable at start-up (will retry on use): %s", exc)

    def _object_key(self, key: str) -> str:
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise SpoolError(f"spool key {key!r} is not a relative object key")
        return self.location.object_key(key)

    @contextlib.contextmanager
    def _translated(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore and boto3 errors raised inside the block into SpoolError."""
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            self._fail(exc, action, key)

    def _fail(self, exc: Exception, action: str, key: str | None) -> NoReturn:
        where = f"s3://{self.location.bucket}/{self._display_prefix()}"
        cause = _client_error(exc)
        if cause is not None:
            error = cause.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or str(cause)
            if code == "NoSuchBucket" or (code in _MISSING_OBJECT and key is None):
                raise SpoolError(
                    f"S3 bucket {self.location.bucket!r} does not exist at {self._endpoint}; "
                    f"create it (aws s3 mb s3://{self.location.bucket}) or fix storage.spool"
                ) from exc
            if code == "InvalidRange" and key is not None:
                raise PastEndError(f"the byte range asked for is past the end of {key}") from exc
            if code in _MISSING_OBJECT:
                raise _MissingObjectError(f"spool object {key} is missing from {where}") from exc
            if code.startswith("KMS.") or "kms" in message.lower():
                raise SpoolError(
                    f"S3 {action} of {key or where} failed at KMS ({code}: {message}); check "
                    "sse_kms_key_id and that the gateway may use the key (kms:GenerateDataKey, "
                    "kms:Decrypt)"
                ) from exc
            if code in _DENIED:
                raise SpoolError(
                    f"S3 {action} of {key or where} was denied ({code}); check the credentials "
                    "and the bucket policy (s3:PutObject, s3:GetObject, s3:DeleteObject, "
                    "s3:ListBucket)"
                ) from exc
            if code in _BAD_CREDENTIALS:
                raise SpoolError(
                    f"S3 refused the credentials ({code}: {message}); check AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY (or the role) and the clock"
                ) from exc
            raise SpoolError(f"S3 {action} of {key or where} failed: {code} {message}") from exc
        if isinstance(exc, NoCredentialsError):
            raise SpoolError(
                "no AWS credentials found for the S3 spool; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run with an instance or task role"
            ) from exc
        if isinstance(_last(exc), BotoConnectionError):
            raise _UnreachableError(
                f"S3 endpoint {self._endpoint} is unreachable during {action} "
                f"of {key or where}: {_last(exc)}"
            ) from exc
        raise SpoolError(f"S3 {action} of {key or where} failed: {exc}") from exc

    def _display_prefix(self) -> str:
        return f"{self.location.prefix}/" if self.location.prefix else ""


class _MissingObjectError(SpoolError):
    """The object is not in the bucket (`exists` answers False)."""


class _UnreachableError(SpoolError):
    """The S3 endpoint did not answer (down, network, timeout)."""


class _BodyReader(io.RawIOBase):
    """A raw, read-only file object over a GET body; stream errors become SpoolError."""

    def __init__(self, body: Any, spool: S3Spool, key: str) -> None:
        super().__init__()
        self._body = body
        self._spool = spool
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            self._spool._fail(exc, "read", self._key)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


def _new_staging_dir() -> Path:
    """A private folder under `$TMPDIR/dicom-gateway-staging-<uid>/`, named `<pid>-<random>`.

    Folders left by processes that no longer run (a crash, SIGKILL) are removed first, so a
    host that restarts gateways does not collect half-received files.
    """
    root = Path(tempfile.gettempdir()) / f"dicom-gateway-staging-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    for folder in root.iterdir():
        pid = folder.name.partition("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as reader:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
