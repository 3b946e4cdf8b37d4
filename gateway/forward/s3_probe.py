"""The idle probe of an `s3` destination: HeadBucket on its bucket, with its own client.

HeadBucket writes nothing and reads no object. A HEAD answer has no body, so S3 gives a status
and no error code: 403 cannot tell "may not list the bucket" from "credentials refused".

=========================================  ==========  ======================================
Answer                                     state       why
=========================================  ==========  ======================================
200                                        up          the bucket is there and ours to use
404, NoSuchBucket                          down        every upload would be dead-lettered
                                                       (NoSuchBucket): create the bucket or
                                                       fix the URL first
InvalidAccessKeyId, SignatureDoesNotMatch, down        the credentials must change
ExpiredToken, no credentials found
5xx, 408, 429, SlowDown, Throttling...     down        busy or failing: deliveries would be
                                                       retried, so keep waiting
403 (HeadBucket needs s3:ListBucket)       degraded    S3 answers; a gateway allowed only
other 4xx, 301 (another region)                        s3:PutObject gets 403 here, so the
                                                       next delivery decides
refused, reset, timed out                  down        not reachable
=========================================  ==========  ======================================
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from gateway.forward.base import ProbeResult
from gateway.forward.s3_failures import TRANSIENT_CODES
from gateway.s3client import BAD_CREDENTIALS, DENIED, error_code, last_exception

PROBE = "HeadBucket"


def head_bucket(client: Any, bucket: str, *, endpoint: str, credentials_hint: str) -> ProbeResult:
    """HeadBucket `bucket`; the table in the module docstring. Where boto errors end."""
    where = f"s3://{bucket} at {endpoint}"
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return _answered(exc, where, credentials_hint)
    except (NoCredentialsError, PartialCredentialsError):
        return ProbeResult(
            "down", PROBE, "no credentials", f"no AWS credentials found: set {credentials_hint}"
        )
    except BotoCoreError as exc:
        last = last_exception(exc)
        if isinstance(last, ConnectTimeoutError | ReadTimeoutError):
            return ProbeResult("down", PROBE, "timeout", f"{where} timed out: {last}")
        if isinstance(last, EndpointConnectionError):
            status = "connection refused" if "refused" in str(last).lower() else "connect failed"
            return ProbeResult("down", PROBE, status, f"cannot connect to {where}: {last}")
        return ProbeResult(
            "down", PROBE, "connection error", f"{where}: {type(last).__name__}: {last}"
        )
    return ProbeResult("up", PROBE, "HTTP 200", f"{where} answered HeadBucket")


def _answered(exc: ClientError, where: str, credentials_hint: str) -> ProbeResult:
    code, message, http = error_code(exc)
    named = "" if code == str(http) else code  # a HEAD answer's "code" is its status
    status = " ".join(part for part in (f"HTTP {http}" if http else "", named) if part)
    status = status or "S3 error"
    if code == "NoSuchBucket" or http == 404 or code in ("404", "NotFound"):
        detail = f"{where}: the bucket does not exist; create it or fix the destination's url"
        return ProbeResult("down", PROBE, status, detail)
    if code in BAD_CREDENTIALS:
        detail = f"{where} refused the credentials ({code}: {message}); check {credentials_hint}"
        return ProbeResult("down", PROBE, status, detail)
    if code in TRANSIENT_CODES or (http is not None and (http >= 500 or http in (408, 429))):
        return ProbeResult("down", PROBE, status, f"{where} is busy or failing ({message})")
    hint = (
        " (HeadBucket needs s3:ListBucket; uploads need only s3:PutObject)"
        if code in DENIED or http == 403
        else ""
    )
    return ProbeResult(
        "degraded",
        PROBE,
        status,
        f"{where} answered {status}{hint}: S3 is up; whether it stores is known once work "
        "for it arrives",
    )
