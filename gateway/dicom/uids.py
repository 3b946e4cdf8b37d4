"""Checks for values that arrive from the wire and may later name files or rows.

A UID is digits and dots, at most 64 characters, with no empty or zero-padded component
(PS3.5 §9.1). Only values that pass are ever used to build a spool key, so `../` and friends
never reach the filesystem.
"""

from __future__ import annotations

import re

from gateway.exceptions import InvalidInputError

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


def is_valid_uid(value: object) -> bool:
    """True if `value` is a UID by the PS3.5 grammar."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def validate_uid(value: object, what: str, *, dicom_status: int = 0xC000) -> str:
    """Return `value` if it is a valid UID, else raise InvalidInputError naming `what`."""
    if isinstance(value, str):
        value = value.rstrip("\x00 ")
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidInputError(
            f"{what} {shown} is not a valid DICOM UID (digits and dots, at most 64 characters)",
            dicom_status=dicom_status,
        )
    assert isinstance(value, str)
    return value


def validate_ae_title(value: str) -> str:
    """Return the stripped AE title if it is 1-16 printable characters without backslash."""
    stripped = value.strip()
    if not 0 < len(stripped) <= 16 or _AE_FORBIDDEN.search(stripped):
        raise InvalidInputError(
            f"AE title {value!r} is invalid: use 1-16 printable characters without backslash"
        )
    return stripped
