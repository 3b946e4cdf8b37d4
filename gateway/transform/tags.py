"""Naming an attribute in config: a DICOM keyword (`InstitutionName`) or a tag `(0008,0080)`.

Why a module of its own: coerce keys and remove lists both name attributes, and a typo must
fail at load with the closest keyword, not silently match nothing at send time.
"""

from __future__ import annotations

import difflib
import re

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.tag import BaseTag, Tag

from gateway.exceptions import ConfigError

_TAG = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")


def parse_tag(name: object, key: str) -> BaseTag:
    """The tag `name` stands for; `key` names the config entry in errors."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}: {name!r} is not an attribute; use a keyword or (gggg,eeee)")
    text = name.strip()
    match = _TAG.fullmatch(text)
    if match:
        return Tag(int(match.group(1), 16), int(match.group(2), 16))
    tag = keyword_dict.get(text)
    if tag is not None:
        return Tag(tag)
    close = difflib.get_close_matches(text, keyword_dict.keys(), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(
        f"{key}: unknown attribute {text!r}; {hint}use a DICOM keyword such as InstitutionName "
        "or a tag written (gggg,eeee) such as (0008,0080)"
    )


def describe(tag: BaseTag) -> str:
    """`Keyword (gggg,eeee)` for messages, or just the tag if it has no keyword."""
    keyword = keyword_for_tag(tag)
    text = f"({tag.group:04X},{tag.element:04X})"
    return f"{keyword} {text}" if keyword else text


def standard_vr(tag: BaseTag, key: str) -> str:
    """The VR of a public dictionary attribute; refuses private and unknown tags."""
    if tag.is_private:
        raise ConfigError(
            f"{key}: {describe(tag)} is a private tag; coerce can set and map only standard "
            "attributes (a private tag needs its private creator); remove it instead"
        )
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        raise ConfigError(
            f"{key}: {describe(tag)} is not in the DICOM dictionary; name a standard attribute"
        ) from None


def dictionary_vr_or_none(tag: BaseTag) -> str | None:
    """The dictionary VR of `tag`, or None for a tag the dictionary does not know."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None
