"""Reading a STOW-RS Store Instances Response (PS3.18 §10.5.3) from an untrusted peer.

Only four attributes matter (ReferencedSOPSequence, FailedSOPSequence, ReferencedSOPInstanceUID,
FailureReason/WarningReason), so they are picked out of the DICOM JSON model directly with type
checks at every step; nothing here raises on a malformed body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.forward.base import Outcome

_T = TypeVar("_T")

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_WARNING_REASON = "00081196"
_FAILURE_REASON = "00081197"

_REASON_TEXT = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
    0xC122: "transfer syntax not supported",
}


def reason_text(code: int) -> str:
    if code in _REASON_TEXT:
        return _REASON_TEXT[code]
    if 0xA700 <= code <= 0xA7FF:
        return "out of resources"
    if 0xA900 <= code <= 0xA9FF:
        return "data set does not match SOP class"
    if 0xC000 <= code <= 0xCFFF:
        return "cannot understand"
    return "unknown reason"


def failure_outcome(reason: int | None) -> Outcome:
    """Map a STOW-RS FailureReason to an outcome (table in the module docstring)."""
    if reason is None:
        return Outcome.TRANSIENT
    if reason == 0x0111:
        return Outcome.DELIVERED
    if 0xA700 <= reason <= 0xA7FF or reason == 0x0110:
        return Outcome.TRANSIENT
    if reason in (0x0122, 0x0124, 0xC122) or 0xA900 <= reason <= 0xA9FF:
        return Outcome.PERMANENT
    if 0xC000 <= reason <= 0xCFFF:
        return Outcome.TRANSIENT
    if 0x0100 <= reason <= 0x02FF:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


@dataclass(slots=True)
class StoreAnswer:
    """The per-instance content of a Store Instances Response, keyed by SOP Instance UID."""

    referenced: dict[str, int | None] = field(default_factory=dict)  # uid -> WarningReason
    failed: dict[str, int | None] = field(default_factory=dict)  # uid -> FailureReason


def parse_store_response(body: bytes) -> StoreAnswer | None:
    """Read a DICOM JSON Store Instances Response; None if the body is not one.

    Only four attributes matter, so they are picked out of the JSON model directly with type
    checks at every step rather than building a pydicom Dataset from untrusted input.
    """
    text = body.lstrip()
    if not text.startswith((b"{", b"[")):
        return None
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, list):
        doc = doc[0] if len(doc) == 1 else None
    if not isinstance(doc, dict):
        return None
    if _REFERENCED_SOP_SEQUENCE not in doc and _FAILED_SOP_SEQUENCE not in doc:
        return None
    answer = StoreAnswer()
    for item in _items(doc, _REFERENCED_SOP_SEQUENCE):
        uid = _first_value(item, _REFERENCED_SOP_INSTANCE_UID, str)
        if uid is not None:
            answer.referenced[uid] = _first_value(item, _WARNING_REASON, int)
    for item in _items(doc, _FAILED_SOP_SEQUENCE):
        uid = _first_value(item, _REFERENCED_SOP_INSTANCE_UID, str)
        if uid is not None:
            answer.failed[uid] = _first_value(item, _FAILURE_REASON, int)
    return answer


def _items(doc: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = doc.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list):
        return []
    return [item for item in values if isinstance(item, dict)]


def _first_value(item: dict[str, Any], tag: str, kind: type[_T]) -> _T | None:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return None
    value = values[0]
    if kind is int and isinstance(value, bool):
        return None
    return value if isinstance(value, kind) else None
