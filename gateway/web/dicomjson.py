"""DICOM JSON (PS3.18 Annex F) pieces shared by QIDO-RS results and WADO-RS metadata.

Why: the database keeps each header as DICOM JSON with large binary values replaced by
`{"vr": .., "BulkDataURI": "bulk:GGGGEEEE"}` markers (gateway/dicom/attributes.py). Those
markers only become useful once rewritten into URLs a client can fetch; the URL encodes the
element's path (`bulk/00540016/0/00181072` for an element inside a sequence item), which the
bulk data endpoint walks back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from gateway.exceptions import InvalidInputError

Document = dict[str, Any]
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_MARKER = "bulk:"
PIXEL_DATA = "7FE00010"


def tag_of(name: str) -> str:
    """`PatientName` or `00100010` -> `00100010`; InvalidInputError for anything else."""
    if _TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidInputError(f"{name[:64]!r} is neither a DICOM keyword nor a tag (GGGGEEEE)")
    return f"{tag:08X}"


def keyword_of(tag: str) -> str:
    """The keyword of a tag, or the tag itself for private and unknown tags."""
    return keyword_for_tag(int(tag, 16)) or tag


def element(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON element; no values gives an empty (zero-length) element."""
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def vr_of(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def load(text: str) -> Document:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("stored header JSON is not an object")
    return document


def rewrite_bulk(document: Document, instance_url: str) -> Document:
    """Replace `bulk:` markers (at any depth) with `{instance_url}/bulk/<path>` URLs."""
    return _rewrite(document, f"{instance_url}/bulk")


def _rewrite(document: Document, prefix: str) -> Document:
    out: Document = {}
    for tag, value in document.items():
        if not isinstance(value, dict):
            out[tag] = value
            continue
        uri = value.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith(_MARKER):
            out[tag] = {**value, "BulkDataURI": f"{prefix}/{tag}"}
        elif value.get("vr") == "SQ" and isinstance(value.get("Value"), list):
            items = [
                _rewrite(item, f"{prefix}/{tag}/{index}") if isinstance(item, dict) else item
                for index, item in enumerate(value["Value"])
            ]
            out[tag] = {**value, "Value": items}
        else:
            out[tag] = value
    return out


def parse_bulk_path(path: str) -> list[str | int]:
    """`00540016/0/00181072` -> ['00540016', 0, '00181072'] (tags at even positions)."""
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) % 2 == 0 or len(parts) > 33:
        raise InvalidInputError("a bulk data path is TAG or TAG/ITEM/TAG... (odd length)")
    steps: list[str | int] = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            if not _TAG.fullmatch(part):
                raise InvalidInputError(f"{part[:16]!r} in the bulk data path is not a tag")
            steps.append(part.upper())
        else:
            if not part.isdigit() or len(part) > 6:
                raise InvalidInputError(f"{part[:16]!r} in the bulk data path is not an item index")
            steps.append(int(part))
    return steps
