"""The `s3://BUCKET/PREFIX?OPTIONS` spool URL, parsed and checked without importing boto3.

Config validation (`gateway/config.py`) calls `parse_s3_url`, so a typo in the URL is reported
at `check-config` time with the key and the fix, before any S3 request is made. Options:

* `sse=aws:kms` - encrypt every object with SSE-KMS (the bucket's or AWS-managed key);
* `sse_kms_key_id=KEY` - SSE-KMS with this key id, alias or ARN (implies `sse=aws:kms`);
* `part_size_mb=N` - multipart part size and threshold in MiB (default 16, S3 minimum 5).

Endpoint, region and credentials are never in the URL: they come from the standard AWS chain
(`AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`... or a role).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from gateway.exceptions import ConfigError

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OPTIONS = ("part_size_mb", "sse", "sse_kms_key_id")
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)
    sse_kms: bool = False
    sse_kms_key_id: str | None = None
    part_size: int = DEFAULT_PART_SIZE

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


def parse_s3_url(url: str, *, setting: str = "storage.spool") -> S3Location:
    """Parse and validate an `s3://` spool URL; raises ConfigError naming `setting`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{setting} is {url!r}; use s3://BUCKET/PREFIX")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{setting}: {bucket!r} is not a valid S3 bucket name "
            "(3-63 lowercase letters, digits, '.' and '-')"
        )
    prefix = parts.path.strip("/")
    if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
        raise ConfigError(f"{setting}: the prefix {prefix!r} has an empty, '.' or '..' segment")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in _OPTIONS:
            raise ConfigError(
                f"{setting}: unknown option {name!r} in the s3:// URL; "
                f"allowed: {', '.join(_OPTIONS)}"
            )
        options[name] = value
    sse = options.get("sse")
    if sse not in (None, "aws:kms"):
        raise ConfigError(f"{setting}: sse is {sse!r}; the supported value is aws:kms (SSE-KMS)")
    key_id = options.get("sse_kms_key_id")
    if key_id is not None and not key_id.strip():
        raise ConfigError(f"{setting}: sse_kms_key_id is empty; give a KMS key id, alias or ARN")
    part_size = DEFAULT_PART_SIZE
    if "part_size_mb" in options:
        raw = options["part_size_mb"]
        if not raw.isdigit() or not 5 <= int(raw) <= 5120:
            raise ConfigError(
                f"{setting}: part_size_mb is {raw!r}; give a whole number of MiB from 5 to 5120"
            )
        part_size = int(raw) * 1024 * 1024
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        sse_kms=sse is not None or key_id is not None,
        sse_kms_key_id=key_id,
        part_size=part_size,
    )
