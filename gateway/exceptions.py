"""One exception tree for the whole gateway.

    GatewayError
    ├── ConfigError            bad or missing configuration; message names the key and the fix
    ├── InvalidInputError      wire data we refuse (bad UID, unreadable header, ...)
    ├── SpoolError             the byte store failed (disk full, S3 down)
    │   └── PastEndError       a byte range starts past the object's end (reads see EOF)
    ├── StoreError             the database failed
    ├── ArchiveError           the audit archive folder cannot be locked, written or read
    ├── RuleError              a routing rule cannot be evaluated
    ├── AuthError              missing or bad credentials
    └── ForwardError           sending to a destination failed
        ├── TransientForwardError   worth retrying later
        └── PermanentForwardError   retrying will not help

Foreign exceptions are translated into these at the adapter boundary (one place per adapter).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Configuration is invalid; the message names the key and how to fix it."""


class InvalidInputError(GatewayError):
    """Data from the wire was refused.

    ``dicom_status`` is the DIMSE/DICOMweb failure status that describes the problem.
    """

    def __init__(self, message: str, *, dicom_status: int = 0xC000) -> None:
        super().__init__(message)
        self.dicom_status = dicom_status


class SpoolError(GatewayError):
    """The spool (filesystem or S3) could not store or return bytes."""


class PastEndError(SpoolError):
    """A byte range starts at or past the end of the object (shorter than the caller thought)."""


class StoreError(GatewayError):
    """The database could not record or return state."""


class ArchiveError(GatewayError):
    """The audit archive (gateway/audit_archive.py) could not be locked, written or read."""


class RuleError(GatewayError):
    """A routing rule could not be evaluated."""


class AuthError(GatewayError):
    """Credentials are missing, invalid or lack a scope."""


class ForwardError(GatewayError):
    """Sending an instance to a destination failed."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientForwardError(ForwardError):
    """The destination may accept the instance later (down, timeout, 5xx)."""


class PermanentForwardError(ForwardError):
    """The destination refused the instance; retrying will not help."""
