"""Object keys of the S3 destination: a template of UIDs, checked at config time and at use.

A key names an object in someone else's bucket, so only values that pass the UID grammar
(digits and dots, at most 64 characters; gateway/dicom/uids.py) ever fill it: never a patient
name, a description or any other free text from the wire. The placeholders are

* `{study}` - Study Instance UID, `{series}` - Series Instance UID,
* `{sop}` - SOP Instance UID (required: without it two instances would share a key),
* `{sop_class}` - SOP Class UID.

The literal text around them may use letters, digits and `/ . _ - =` (so `study={study}/...`
partitions work), has no empty, `.` or `..` segment and does not start with `/`. The whole key,
with the URL's prefix, stays below S3's 1024-byte limit whatever the UIDs. Importing this
module does not import boto3, so config validation can use it.
"""

from __future__ import annotations

import re
import string

from gateway.dicom.uids import is_valid_uid
from gateway.exceptions import ConfigError

__all__ = ["DEFAULT_KEY_TEMPLATE", "PLACEHOLDERS", "check_key_template", "render_key"]

DEFAULT_KEY_TEMPLATE = "{study}/{series}/{sop}.dcm"
PLACEHOLDERS = ("study", "series", "sop", "sop_class")
_LITERAL = re.compile(r"[A-Za-z0-9/._=-]*")
_LONGEST_UID = "1" * 64
_MAX_TEMPLATE_KEY = 700  # bytes with 64-character UIDs; leaves room for the URL's prefix


def check_key_template(template: str, setting: str) -> str:
    """Return `template` if it is a usable key template; ConfigError naming `setting` if not."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"{setting} is {template!r}: {exc}; write placeholders as {{study}}, {{series}}, "
            "{sop}, {sop_class}"
        ) from exc
    seen: set[str] = set()
    for literal, field, spec, conversion in parts:
        if not _LITERAL.fullmatch(literal):
            raise ConfigError(
                f"{setting} is {template!r}: the text {literal!r} may use only letters, digits "
                "and / . _ - ="
            )
        if field is None:
            continue
        if field not in PLACEHOLDERS or spec or conversion:
            raise ConfigError(
                f"{setting} is {template!r}: {{{field}}} is not a placeholder; use "
                f"{', '.join('{' + name + '}' for name in PLACEHOLDERS)} (UIDs only, no formats)"
            )
        seen.add(field)
    if "sop" not in seen:
        raise ConfigError(
            f"{setting} is {template!r}: it must contain {{sop}}, or every instance of a series "
            "would overwrite the same object"
        )
    sample = template.format(**{name: _LONGEST_UID for name in PLACEHOLDERS})
    if sample.startswith("/") or any(part in ("", ".", "..") for part in sample.split("/")):
        raise ConfigError(
            f"{setting} is {template!r}: a key must not start with '/' or have an empty, "
            "'.' or '..' segment"
        )
    if len(sample) > _MAX_TEMPLATE_KEY:
        raise ConfigError(f"{setting} is {template!r}: keys would be too long for S3")
    return template


def render_key(
    template: str, *, study: str, series: str, sop: str, sop_class: str
) -> str | tuple[str, str]:
    """The key for one instance, or (placeholder, value) for the first value that is no UID."""
    values = {"study": study, "series": series, "sop": sop, "sop_class": sop_class}
    for name, value in values.items():
        if f"{{{name}}}" in template and not is_valid_uid(value):
            return name, value
    return template.format(**values)
