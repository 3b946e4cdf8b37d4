"""What the S3 spool and the S3 destination share: the boto3 client and reading its errors.

Both talk to S3 through one client shape (standard retries, bounded timeouts) and read
botocore's failures the same way; each then says what the failure means for its own job (a
SpoolError for the spool, a per-instance outcome for the sender). Importing this module imports
boto3, so only the S3 backends do.
"""

from __future__ import annotations

from typing import Any

import boto3
from boto3.exceptions import RetriesExceededError
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = [
    "BAD_CREDENTIALS",
    "DENIED",
    "MISSING_OBJECT",
    "client_error",
    "error_code",
    "last_exception",
    "make_client",
]

MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    connect_timeout: float = 5,
    read_timeout: float = 60,
    max_attempts: int = 3,
    max_pool_connections: int = 64,
) -> Any:
    """An S3 client with bounded retries; what is not given comes from the standard AWS chain.

    Without arguments it is configured only by the chain (environment, shared config and
    credentials files, instance or task role), which is what the spool uses.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )
    return boto3.session.Session().client(
        "s3",
        config=config,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
    )


def client_error(exc: BaseException) -> ClientError | None:
    """The ClientError behind `exc` (boto3's transfer errors wrap or chain it)."""
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return None
        if isinstance(current, ClientError):
            return current
        if isinstance(current, RetriesExceededError):
            current = current.last_exception
        else:
            current = current.__cause__ or current.__context__
    return None


def error_code(error: ClientError) -> tuple[str, str, int | None]:
    """(S3 error code, message, HTTP status) of a ClientError; HEAD answers carry no code."""
    response: dict[str, Any] = dict(error.response)
    details = response.get("Error", {})
    code = str(details.get("Code", ""))
    message = str(details.get("Message", "")) or str(error)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, message, int(status) if status is not None else None


def last_exception(exc: BaseException) -> BaseException:
    """The error behind boto3's RetriesExceededError, else `exc` itself."""
    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return exc.last_exception  # type: ignore[no-any-return]
    return exc
