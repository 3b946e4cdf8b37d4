"""S3 sender: stores each instance as one object in a bucket (data lakes, archives, AI pipelines).

Each instance of a batch becomes one object named by the destination's key template
(gateway/s3keys.py: UIDs only, checked against the UID grammar first) under the URL's prefix,
with content type ``application/dicom`` and user metadata ``sha256`` (of the bytes),
``study-instance-uid``, ``series-instance-uid``, ``sop-instance-uid``, ``sop-class-uid`` and
``transfer-syntax-uid``. The bytes stream from the spool (``OutgoingInstance.open()``) through
boto3's managed transfer: objects of ``part_size_mb`` (default 16 MiB) or more go up as a
multipart upload, and at most ``max_concurrency`` parts are in memory at once, so memory does
not grow with object size. SSE-KMS and the part size come from the URL's options, exactly as
for an S3 spool (gateway/spool/s3url.py).

Idempotence
-----------
Re-sending an instance writes the same key. Before uploading, the sender asks for the object's
metadata (HeadObject):

=====================================  ==========  ===========================================
The key holds                           Outcome     detail
=====================================  ==========  ===========================================
nothing                                 DELIVERED   ``stored s3://bucket/key``
an object with the same ``sha256``      DELIVERED   ``already stored ... not uploaded again``;
                                                    warning=True, so duplicates are counted
an object with another or no sha256     DELIVERED   ``replaced ...``: a corrected re-send (the
                                                    ingest duplicate policy ``replace``) must
                                                    win, so the newer bytes overwrite
HeadObject denied (no s3:GetObject)     DELIVERED   uploaded anyway; the detail says the check
                                                    was not possible
=====================================  ==========  ===========================================

The bytes are hashed while they are sent; if they differ from the recorded size or sha256 the
object just written is deleted and the delivery is PERMANENT (``spool``): the spool copy is not
what was received, and an object whose ``sha256`` label lies is worse than none.

Failures become outcomes in gateway/forward/s3_failures.py (connection problems and S3 being
busy are retried; a missing bucket, denied access, bad credentials and KMS errors are
dead-lettered with the fix).

``send`` never raises; each instance gets its own result. boto3's own retries (standard mode,
3 attempts) run first; retrying later, with backoff, is the worker's job.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
)

from gateway.dicom.uids import is_valid_uid
from gateway.exceptions import ConfigError, GatewayError
from gateway.forward.base import Outcome, OutgoingInstance, ProbeResult, SendResult
from gateway.forward.s3_failures import FailureContext, Unreachable, failure_result
from gateway.s3client import (
    DENIED,
    MISSING_OBJECT,
    error_code,
)
from gateway.s3keys import DEFAULT_KEY_TEMPLATE, check_key_template, render_key
from gateway.spool.s3url import S3Location

__all__ = ["S3Sender"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


class S3Sender:
    """Stores batches as objects under ``s3://bucket/prefix/``; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        location: S3Location,
        client_factory: Callable[[], Any],
        key_template: str = DEFAULT_KEY_TEMPLATE,
        storage_class: str | None = None,
        max_concurrency: int = 4,
        credentials_hint: str = "the AWS credential chain (AWS_ACCESS_KEY_ID...) or the role",
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError(f"destination {name!r}: max_concurrency must be at least 1")
        self.name = name
        self._setting = f"destinations.{name}"
        self._location = location
        self._template = check_key_template(key_template, f"{self._setting}.key_template")
        self._client_factory = client_factory
        self._client: Any | None = None
        self._credentials_hint = credentials_hint
        self._transfer = TransferConfig(
            multipart_threshold=location.part_size,
            multipart_chunksize=location.part_size,
            max_concurrency=max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # Parts read from a stream are held in memory until sent: bound how many.
        self._transfer.max_in_memory_upload_chunks = max_concurrency
        self._extra: dict[str, Any] = {"ContentType": "application/dicom"}
        if location.sse_kms:
            self._extra["ServerSideEncryption"] = "aws:kms"
            if location.sse_kms_key_id:
                self._extra["SSEKMSKeyId"] = location.sse_kms_key_id
        if storage_class:
            self._extra["StorageClass"] = storage_class

    # -- Sender protocol ---------------------------------------------------------------------

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        """Store every instance of ``batch``; one result per instance, in batch order."""
        results: list[SendResult] = []
        down: Unreachable | None = None
        for inst in batch:
            if down is not None:
                detail = f"not tried: {down.detail}"
                results.append(SendResult(inst.delivery_id, Outcome.TRANSIENT, down.status, detail))
                continue
            try:
                outcome = self._store(inst)
            except Exception as exc:  # a bug here must not cost the rest of the batch
                log.exception("S3 sender %s failed on %s", self.name, inst.sop_instance_uid)
                outcome = SendResult(
                    inst.delivery_id,
                    Outcome.TRANSIENT,
                    "internal error",
                    f"{type(exc).__name__}: {exc}",
                )
            if isinstance(outcome, Unreachable):
                down = outcome
                outcome = SendResult(inst.delivery_id, Outcome.TRANSIENT, down.status, down.detail)
            results.append(outcome)
        return results

    def probe(self) -> ProbeResult:
        """The idle probe: HeadBucket on the bucket (gateway/forward/s3_probe.py)."""
        from gateway.forward.s3_probe import head_bucket

        client = self._get_client()
        return head_bucket(
            client,
            self._location.bucket,
            endpoint=self._endpoint(),
            credentials_hint=self._credentials_hint,
        )

    def close(self) -> None:
        """Drop the client (its connection pool); a new one is made on the next send."""
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()

    # -- one instance ------------------------------------------------------------------------

    def _store(self, inst: OutgoingInstance) -> SendResult | Unreachable:
        rendered = render_key(
            self._template,
            study=inst.study_instance_uid,
            series=inst.series_instance_uid,
            sop=inst.sop_instance_uid,
            sop_class=inst.sop_class_uid,
        )
        if isinstance(rendered, tuple):
            placeholder, value = rendered
            return SendResult(
                inst.delivery_id,
                Outcome.PERMANENT,
                "invalid UID",
                f"{{{placeholder}}} would be {value[:80]!r}, which is not a valid DICOM UID; "
                "it cannot name an S3 key",
            )
        key = self._location.object_key(rendered)
        where = f"s3://{self._location.bucket}/{key}"
        digest = inst.sha256
        if digest is None:
            hashed = self._hash_pass(inst)
            if isinstance(hashed, SendResult):
                return hashed
            digest = hashed
        client = self._get_client()
        try:
            existing, note = self._existing_sha256(client, key)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            return self._failure(inst, exc, "check", where)
        if existing is not None and existing == digest:
            return SendResult(
                inst.delivery_id,
                Outcome.DELIVERED,
                "HTTP 200 duplicate",
                f"already stored as {where} with the same sha256; not uploaded again",
                warning=True,
            )
        uploaded = self._upload(client, inst, key, where, digest)
        if uploaded is not None:
            return uploaded
        if existing is not None or note == "other":
            what = f"replaced {where} (it held other bytes: a corrected re-send)"
        else:
            what = f"stored {where}"
        return SendResult(inst.delivery_id, Outcome.DELIVERED, "HTTP 200", what + _note_text(note))

    def _upload(
        self, client: Any, inst: OutgoingInstance, key: str, where: str, digest: str
    ) -> SendResult | Unreachable | None:
        """Stream the instance to `key`; None when stored with exactly the recorded bytes."""
        try:
            source = inst.open()
        except (GatewayError, OSError) as exc:
            return _spool_result(inst, f"cannot read the spool copy: {exc}")
        reader = _HashingReader(source)
        try:
            client.upload_fileobj(
                reader,
                self._location.bucket,
                key,
                ExtraArgs={**self._extra, "Metadata": _metadata(inst, digest)},
                Config=self._transfer,
            )
        except Exception as exc:
            if reader.error is not None:
                return _spool_result(inst, f"cannot read the spool copy: {reader.error}")
            if isinstance(exc, ClientError | BotoCoreError | Boto3Error):
                return self._failure(inst, exc, "upload", where)
            raise
        finally:
            reader.close()
        if reader.size != inst.size or reader.hexdigest() != digest:
            self._delete_quietly(client, key)
            return SendResult(
                inst.delivery_id,
                Outcome.PERMANENT,
                "spool",
                f"the spool copy ({reader.size} bytes, sha256 {reader.hexdigest()[:16]}...) is not "
                f"what was received ({inst.size} bytes, sha256 {digest[:16]}...); {where} was "
                "removed again. Check the spool's storage",
            )
        return None

    def _hash_pass(self, inst: OutgoingInstance) -> str | SendResult:
        """SHA-256 of the instance's bytes when the caller does not know it (one extra read)."""
        reader: _HashingReader | None = None
        try:
            reader = _HashingReader(inst.open())
            while reader.read(_CHUNK):
                pass
        except (GatewayError, OSError) as exc:
            return _spool_result(inst, f"cannot read the spool copy: {exc}")
        finally:
            if reader is not None:
                reader.close()
        if reader.size != inst.size:
            return SendResult(
                inst.delivery_id,
                Outcome.PERMANENT,
                "spool",
                f"the spool copy has {reader.size} bytes, {inst.size} were received; "
                "check the spool's storage",
            )
        return reader.hexdigest()

    def _existing_sha256(self, client: Any, key: str) -> tuple[str | None, str]:
        """(sha256 label of the object at `key`, note); the note is "", "other" or "unchecked".

        "other": an object is there without a sha256 label (written by someone else).
        "unchecked": HeadObject was refused (403: no s3:GetObject or, for a missing key,
        no s3:ListBucket), so we upload without knowing.
        """
        try:
            head = client.head_object(Bucket=self._location.bucket, Key=key)
        except ClientError as exc:
            code, _message, http = error_code(exc)
            if code in MISSING_OBJECT or http == 404:
                return None, ""
            if code in DENIED or http == 403:
                return None, "unchecked"
            raise
        metadata: Mapping[str, str] = head.get("Metadata") or {}
        label = metadata.get("sha256")
        return (label, "") if label else (None, "other")

    def _delete_quietly(self, client: Any, key: str) -> None:
        try:
            client.delete_object(Bucket=self._location.bucket, Key=key)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            log.error("could not remove s3://%s/%s again: %s", self._location.bucket, key, exc)

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _failure(
        self, inst: OutgoingInstance, exc: BaseException, action: str, where: str
    ) -> SendResult | Unreachable:
        return failure_result(
            inst,
            exc,
            action,
            where,
            FailureContext(
                destination=self.name,
                setting=self._setting,
                bucket=self._location.bucket,
                prefix_pattern=self._prefix_pattern(),
                credentials_hint=self._credentials_hint,
                endpoint=self._endpoint(),
            ),
        )

    def _endpoint(self) -> str:
        client = self._client
        return str(getattr(getattr(client, "meta", None), "endpoint_url", None) or "S3")

    def _prefix_pattern(self) -> str:
        prefix = self._location.prefix
        return f"{prefix}/*" if prefix else "*"


class _HashingReader:
    """A forward-only reader over a spool stream that hashes and counts what passes through.

    It says it cannot seek, so boto3 reads each part exactly once, in order: the digest is
    then that of the bytes sent. A spool read error is kept so it is reported as the spool's.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, amount: int | None = -1) -> bytes:
        wanted = None if amount is None or amount < 0 else amount
        chunks: list[bytes] = []
        got = 0
        while wanted is None or got < wanted:
            try:
                chunk = self._source.read(_CHUNK if wanted is None else wanted - got)
            except Exception as exc:
                self.error = exc
                raise
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self._digest.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        try:
            self._source.close()
        except Exception as exc:  # closing a spool stream has nothing left to lose
            log.debug("closing a spool stream failed: %s", exc)


def _metadata(inst: OutgoingInstance, digest: str) -> dict[str, str]:
    """User metadata (x-amz-meta-*): HTTP headers, so only values that are UIDs go in."""
    uids = {
        "study-instance-uid": inst.study_instance_uid,
        "series-instance-uid": inst.series_instance_uid,
        "sop-instance-uid": inst.sop_instance_uid,
        "sop-class-uid": inst.sop_class_uid,
        "transfer-syntax-uid": inst.transfer_syntax_uid,
    }
    return {"sha256": digest, **{name: uid for name, uid in uids.items() if is_valid_uid(uid)}}


def _spool_result(inst: OutgoingInstance, detail: str) -> SendResult:
    return SendResult(inst.delivery_id, Outcome.TRANSIENT, "spool", detail)


def _note_text(note: str) -> str:
    if note == "unchecked":
        return (
            "; the duplicate check was denied (HeadObject: grant s3:GetObject, and s3:ListBucket "
            "so a missing key answers 404), so it was uploaded without checking"
        )
    return ""
