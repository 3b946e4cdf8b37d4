"""How S3 errors become delivery outcomes for the S3 sender (gateway/forward/s3.py).

How a failure settles an instance
---------------------------------
===========================================  ==========  ======================================
Failure                                       Outcome     why
===========================================  ==========  ======================================
connection refused, reset, timed out          TRANSIENT   S3 comes back; the rest of the batch
                                                          is not tried (same status)
HTTP 5xx, 408, 429, SlowDown, Throttling,     TRANSIENT   passing; the worker backs off
RequestTimeout, RequestTimeTooSkewed,
InternalError, ServiceUnavailable
no credentials found                          TRANSIENT   a role or variable may appear; the
                                                          attempt limit dead-letters
NoSuchBucket                                  PERMANENT   create the bucket or fix the URL
AccessDenied, 403                             PERMANENT   IAM or bucket policy must change
InvalidAccessKeyId, SignatureDoesNotMatch,    PERMANENT   the credentials must change
ExpiredToken, InvalidToken
KMS.* or a KMS message                        PERMANENT   the key or its policy must change
other 4xx (InvalidStorageClass, ...)          PERMANENT   resending gets the same answer
a UID that is not a UID                       PERMANENT   it cannot name a key
spool cannot be read                          TRANSIENT   as for the other senders
===========================================  ==========  ======================================
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.s3client import BAD_CREDENTIALS, DENIED, client_error, error_code, last_exception

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "BadDigest",
        "IncompleteBody",
    }
)


@dataclass(frozen=True, slots=True)
class Unreachable:
    """S3 did not answer: every instance not yet tried in this batch gets this result."""

    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class FailureContext:
    """What an operator needs named in a failure's detail."""

    destination: str
    setting: str  # destinations.NAME
    bucket: str
    prefix_pattern: str  # for the IAM resource in the hint
    credentials_hint: str
    endpoint: str


def failure_result(
    inst: OutgoingInstance, exc: BaseException, action: str, where: str, ctx: FailureContext
) -> SendResult | Unreachable:
    """The one place where botocore and boto3 errors become outcomes (module docstring)."""
    bucket = ctx.bucket
    cause = client_error(exc)
    if cause is not None:
        code, message, http = error_code(cause)
        status = " ".join(part for part in (f"HTTP {http}" if http else "", code) if part)
        status = status or "S3 error"

        def result(outcome: Outcome, detail: str) -> SendResult:
            return SendResult(inst.delivery_id, outcome, status, detail)

        if code == "NoSuchBucket":
            return result(
                Outcome.PERMANENT,
                f"bucket {bucket!r} does not exist at {ctx.endpoint}: create it "
                f"(aws s3 mb s3://{bucket}) or fix {ctx.setting}.url",
            )
        if code.startswith("KMS.") or "kms" in message.lower():
            return result(
                Outcome.PERMANENT,
                f"S3 {action} of {where} failed at KMS ({code}: {message}): check that the "
                f"key in {ctx.setting}.url (sse_kms_key_id) exists and is enabled and "
                "that the gateway may use it (kms:GenerateDataKey, kms:Decrypt)",
            )
        busy = http is not None and (http >= 500 or http in (408, 429))
        if code in TRANSIENT_CODES or busy:
            return result(
                Outcome.TRANSIENT,
                f"S3 {action} of {where} failed ({code or http}: {message}); "
                "S3 is busy or failing, retrying later",
            )
        if code in DENIED:
            return result(
                Outcome.PERMANENT,
                f"S3 denied the {action} of {where} ({code}): allow s3:PutObject and "
                f"s3:GetObject on arn:aws:s3:::{bucket}/{ctx.prefix_pattern} for the "
                "gateway's credentials (IAM policy and bucket policy)",
            )
        if code in BAD_CREDENTIALS:
            return result(
                Outcome.PERMANENT,
                f"S3 refused the credentials of destination {ctx.destination!r} ({code}: "
                f"{message}): check {ctx.credentials_hint} and the host's clock",
            )
        return result(
            Outcome.PERMANENT,
            f"S3 refused the {action} of {where} ({code or http}: {message}); check {ctx.setting}",
        )
    last = last_exception(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return Unreachable(
            "no credentials",
            f"no AWS credentials for destination {ctx.destination!r}: set {ctx.credentials_hint}",
        )
    if isinstance(last, ConnectTimeoutError | ReadTimeoutError):
        return Unreachable(
            "timeout", f"S3 at {ctx.endpoint} timed out during {action} of {where}: {last}"
        )
    if isinstance(last, EndpointConnectionError):
        return Unreachable(
            "connection refused" if "refused" in str(last).lower() else "connect failed",
            f"cannot connect to S3 at {ctx.endpoint} ({action} of {where}): {last}",
        )
    if isinstance(last, BotoConnectionError | HTTPClientError):
        return Unreachable(
            "connection error",
            f"the connection to S3 at {ctx.endpoint} failed during {action} of {where}: {last}",
        )
    return SendResult(
        inst.delivery_id,
        Outcome.TRANSIENT,
        "S3 error",
        f"S3 {action} of {where} failed: {type(last).__name__}: {last}",
    )
